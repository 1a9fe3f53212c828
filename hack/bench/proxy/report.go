package main

import (
	"fmt"
	"runtime"
	"strings"
)

// The budget of DESIGN.md for a sidecar pair at 1000 rps, 16 connections.
const (
	budgetAddedP50 = 0.25 // ms
	budgetAddedP99 = 1.0  // ms
	budgetCPU      = 0.10 // vCPU per 1000 rps, per proxy
	budgetRSS      = 20.0 // MB, client proxy with 1000 services
)

// table prints a Markdown table with columns sized to their content.
type table struct {
	head []string
	rows [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) print(b *strings.Builder) {
	widths := make([]int, len(t.head))
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		for i, c := range cells {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i == 0 {
				fmt.Fprintf(b, "| %s%s ", c, pad)
			} else {
				fmt.Fprintf(b, "| %s%s ", pad, c)
			}
		}
		b.WriteString("|\n")
	}
	line(t.head)
	for i, wd := range widths {
		if i == 0 {
			fmt.Fprintf(b, "|%s", strings.Repeat("-", wd+2))
		} else {
			fmt.Fprintf(b, "|%s:", strings.Repeat("-", wd+1))
		}
	}
	b.WriteString("|\n")
	for _, r := range t.rows {
		line(r)
	}
}

func ms(sec float64) string  { return fmt.Sprintf("%.3f", sec*1000) }
func add(sec float64) string { return fmt.Sprintf("%+.3f", sec*1000) }

// report is the benchmark's output: conditions, the two load tables, braid against the
// other pairs, and the budget.
func report(o options, m machine, res map[string]caseResult, rounds map[string][]caseResult) string {
	b := &strings.Builder{}
	median := ""
	if o.rounds > 1 {
		median = fmt.Sprintf(", median of %d interleaved rounds", o.rounds)
	}
	fmt.Fprintf(b, "\nBraid proxy pair vs nginx and haproxy pairs (%s, commit %s%s)\n\n", m.start.Format("2006-01-02 15:04"), m.commit, median)
	fmt.Fprintf(b, "fortio load, HTTP/1.1 GET, 1 KB answers, %d connections: %g qps for %s, then max for %s;\n", o.conns, o.qps, o.duration, o.duration)
	fmt.Fprintf(b, "loopback; mTLS (TLS 1.3) between the proxies of a pair; client proxy pinned to core %d,\n", clientCore)
	fmt.Fprintf(b, "server proxy to core %d; fortio and the backend (fortio server) unpinned, on both cores.\n", serverCore)
	fmt.Fprintf(b, "braid: GOMAXPROCS=1, %d Services in the client's config (a %s file); nginx: 1 worker; haproxy: nbthread 1.\n", o.services, strings.ToUpper(o.configFormat))
	fmt.Fprintf(b, "machine: %d cores, %s, kernel %s; load average (1 min) %.2f at start, %.2f at end, %.2f at most\n",
		runtime.NumCPU(), m.cpu, m.kernel, m.loadStart, m.loadEnd, m.loadMax)
	fmt.Fprintf(b, "versions: nginx %s; %s; fortio %s\n\n", or(m.nginx), or(m.haproxy), or(m.fortio))
	fixedTable(b, o, res)
	if o.rounds > 1 {
		roundsTable(b, o, rounds)
	}
	maxTable(b, o, res)
	if _, ok := res["braid"]; ok {
		ratioTable(b, res)
		budgetTable(b, o, res)
	}
	return b.String()
}

func fixedTable(b *strings.Builder, o options, res map[string]caseResult) {
	direct := res["direct"]
	fmt.Fprintf(b, "At %g qps. Latency in ms; CPU: the proxies' CPU time in ms per 1000 requests; runq: the\n", o.qps)
	b.WriteString("time in ms per 1000 requests the proxies waited, runnable, for their core; RSS: peak, MB;\n")
	b.WriteString("others: CPU of processes outside the benchmark during the run, in cores (the noise).\n\n")
	t := &table{head: []string{"case", "qps", "p50", "p90", "p99", "p99.9", "+p50", "+p99", "CPU client+server", "runq c+s", "RSS client/server", "errors", "others"}}
	for _, name := range o.cases {
		r := res[name]
		f := r.fixed
		row := []string{name, fmt.Sprintf("%.0f", f.qps), ms(f.p50), ms(f.p90), ms(f.p99), ms(f.p999), "", "", "", "", "", fmt.Sprint(f.errors), fmt.Sprintf("%.2f", r.othersFixed)}
		if name != "direct" {
			row[6], row[7] = add(f.p50-direct.fixed.p50), add(f.p99-direct.fixed.p99)
			row[8] = fmt.Sprintf("%.0f + %.0f = %.0f", r.cpuFixed[0], r.cpuFixed[1], r.cpuFixed[0]+r.cpuFixed[1])
			row[9] = fmt.Sprintf("%.0f + %.0f", r.waitFixed[0], r.waitFixed[1])
			row[10] = fmt.Sprintf("%.1f / %.1f", r.rssFixed[0], r.rssFixed[1])
		}
		t.add(row...)
	}
	t.print(b)
}

// roundsTable shows each round's latency at the fixed rate, with the noise it met.
func roundsTable(b *strings.Builder, o options, rounds map[string][]caseResult) {
	fmt.Fprintf(b, "\nEach round at %g qps: p50 / p99 in ms (others, cores):\n\n", o.qps)
	t := &table{head: []string{"case"}}
	for i := range o.rounds {
		t.head = append(t.head, fmt.Sprintf("round %d", i+1))
	}
	for _, name := range o.cases {
		row := []string{name}
		for _, r := range rounds[name] {
			row = append(row, fmt.Sprintf("%s / %s (%.2f)", ms(r.fixed.p50), ms(r.fixed.p99), r.othersFixed))
		}
		t.add(row...)
	}
	t.print(b)
}

func maxTable(b *strings.Builder, o options, res map[string]caseResult) {
	direct := res["direct"]
	fmt.Fprintf(b, "\nMax throughput (fortio -qps 0, %d connections):\n\n", o.conns)
	t := &table{head: []string{"case", "rps", "vs direct", "p50", "p99", "p99.9", "CPU client+server", "runq c+s", "RSS client/server", "errors", "others"}}
	for _, name := range o.cases {
		r := res[name]
		x := r.max
		row := []string{name, fmt.Sprintf("%.0f", x.qps), fmt.Sprintf("%.2f", x.qps/direct.max.qps), ms(x.p50), ms(x.p99), ms(x.p999), "", "", "", fmt.Sprint(x.errors), fmt.Sprintf("%.2f", r.othersMax)}
		if name != "direct" {
			row[6] = fmt.Sprintf("%.0f + %.0f = %.0f", r.cpuMax[0], r.cpuMax[1], r.cpuMax[0]+r.cpuMax[1])
			row[7] = fmt.Sprintf("%.0f + %.0f", r.waitMax[0], r.waitMax[1])
			row[8] = fmt.Sprintf("%.1f / %.1f", r.rssMax[0], r.rssMax[1])
		}
		t.add(row...)
	}
	t.print(b)
}

// ratioTable compares braid with the other pairs that ran.
func ratioTable(b *strings.Builder, res map[string]caseResult) {
	var refs []string
	for _, name := range []string{"nginx", "haproxy"} {
		if _, ok := res[name]; ok {
			refs = append(refs, name)
		}
	}
	if len(refs) == 0 {
		return
	}
	direct, braid := res["direct"], res["braid"]
	b.WriteString("\nbraid against the other pairs (ratio > 1: braid has more; for max rps more is better):\n\n")
	t := &table{head: append([]string{"measure", "braid"}, refs...)}
	for _, r := range refs {
		t.head = append(t.head, "braid/"+r)
	}
	for _, mm := range []struct {
		name, format string
		f            func(caseResult) float64
	}{
		{"added p50 at 1000 qps (ms)", "%.3f", func(r caseResult) float64 { return (r.fixed.p50 - direct.fixed.p50) * 1000 }},
		{"added p99 at 1000 qps (ms)", "%.3f", func(r caseResult) float64 { return (r.fixed.p99 - direct.fixed.p99) * 1000 }},
		{"CPU ms/1000 req, pair, 1000 qps", "%.0f", func(r caseResult) float64 { return r.cpuFixed[0] + r.cpuFixed[1] }},
		{"CPU ms/1000 req, pair, max", "%.0f", func(r caseResult) float64 { return r.cpuMax[0] + r.cpuMax[1] }},
		{"peak RSS client proxy (MB)", "%.1f", func(r caseResult) float64 { return r.rssMax[0] }},
		{"peak RSS server proxy (MB)", "%.1f", func(r caseResult) float64 { return r.rssMax[1] }},
		{"max rps", "%.0f", func(r caseResult) float64 { return r.max.qps }},
	} {
		row := []string{mm.name, fmt.Sprintf(mm.format, mm.f(braid))}
		for _, r := range refs {
			row = append(row, fmt.Sprintf(mm.format, mm.f(res[r])))
		}
		for _, r := range refs {
			row = append(row, ratio(mm.f(braid), mm.f(res[r])))
		}
		t.add(row...)
	}
	t.print(b)
}

// budgetTable checks the braid pair against DESIGN.md's budget.
func budgetTable(b *strings.Builder, o options, res map[string]caseResult) {
	direct, braid := res["direct"], res["braid"]
	fmt.Fprintf(b, "\nBudget (DESIGN.md), braid pair at %g qps:\n\n", o.qps)
	t := &table{head: []string{"budget line", "braid", "limit", "result"}}
	addedP50 := (braid.fixed.p50 - direct.fixed.p50) * 1000
	addedP99 := (braid.fixed.p99 - direct.fixed.p99) * 1000
	t.add("added p50 vs direct", fmt.Sprintf("%.3f ms", addedP50), fmt.Sprintf("<= %.2f ms", budgetAddedP50), pass(addedP50 <= budgetAddedP50))
	t.add("added p99 vs direct", fmt.Sprintf("%.3f ms", addedP99), fmt.Sprintf("<= %.2f ms", budgetAddedP99), pass(addedP99 <= budgetAddedP99))
	ng, hasNginx := res["nginx"]
	if hasNginx {
		n50, n99 := (ng.fixed.p50-direct.fixed.p50)*1000, (ng.fixed.p99-direct.fixed.p99)*1000
		t.add("added p50 no worse than nginx pair", fmt.Sprintf("%.3f ms", addedP50), fmt.Sprintf("<= %.3f ms", n50), pass(addedP50 <= n50))
		t.add("added p99 no worse than nginx pair", fmt.Sprintf("%.3f ms", addedP99), fmt.Sprintf("<= %.3f ms", n99), pass(addedP99 <= n99))
	}
	cpuC, cpuS := braid.cpuFixed[0]/1000, braid.cpuFixed[1]/1000
	t.add("CPU per proxy, vCPU per 1000 rps", fmt.Sprintf("client %.3f, server %.3f", cpuC, cpuS), fmt.Sprintf("<= %.2f each", budgetCPU), pass(max(cpuC, cpuS) <= budgetCPU))
	t.add(fmt.Sprintf("peak RSS (VmHWM), client proxy, %d Services", o.services), fmt.Sprintf("%.1f MB", braid.rssFixed[0]), fmt.Sprintf("<= %.0f MB", budgetRSS), pass(braid.rssFixed[0] <= budgetRSS))
	t.add(fmt.Sprintf("RSS at %g qps (VmRSS), client proxy", o.qps), fmt.Sprintf("%.1f MB (%.1f of the binary)", braid.rssNow[0], braid.fileNow[0]), fmt.Sprintf("<= %.0f MB", budgetRSS), pass(braid.rssNow[0] <= budgetRSS))
	if hasNginx {
		t.add("max throughput, one core per proxy", fmt.Sprintf("%.0f rps", braid.max.qps), fmt.Sprintf(">= %.0f rps (nginx)", ng.max.qps), pass(braid.max.qps >= ng.max.qps))
	}
	t.print(b)
	b.WriteString("\n")
}

func pass(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func or(s string) string {
	if s == "" {
		return "(not installed)"
	}
	return s
}
