package netinit

import (
	"fmt"

	"github.com/google/nftables"
)

// Apply writes the rules of o into the network namespace of conn (the caller's, by
// default): it deletes the table inet braid if there is one and creates it anew, in one
// transaction, so that running it again gives the same result and no packet ever sees
// half a table. It needs CAP_NET_ADMIN only.
func Apply(o Options, conn ...nftables.ConnOption) error {
	rules, err := Rules(o)
	if err != nil {
		return err
	}
	c, err := nftables.New(conn...)
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// Adding a table that exists does nothing, so add, delete and add again deletes the
	// old one whether or not there was one.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	accept := nftables.ChainPolicyAccept
	chains := map[string]*nftables.Chain{
		ChainPrerouting: c.AddChain(&nftables.Chain{
			Name: ChainPrerouting, Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
		}),
		ChainOutput: c.AddChain(&nftables.Chain{
			Name: ChainOutput, Table: table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
		}),
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: table, Chain: chains[r.Chain], Exprs: r.Exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing the nftables table inet %s (needs CAP_NET_ADMIN, and a kernel with nf_tables and its NAT): %w", TableName, err)
	}
	return nil
}

// Installed returns the number of rules of each chain of the table inet braid in the
// network namespace of conn; a missing table is an error.
func Installed(conn ...nftables.ConnOption) (map[string]int, error) {
	c, err := nftables.New(conn...)
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	out := map[string]int{}
	for _, name := range []string{ChainPrerouting, ChainOutput} {
		rules, err := c.GetRules(table, &nftables.Chain{Name: name, Table: table})
		if err != nil {
			return nil, fmt.Errorf("listing chain %s of table inet %s: %w", name, TableName, err)
		}
		out[name] = len(rules)
	}
	return out, nil
}
