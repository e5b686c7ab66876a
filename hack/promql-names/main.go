// promql-names prints the metric names a list of PromQL expressions selects, parsed by Prometheus'
// own parser: the test that every metric the alerts and the dashboard use is one the operator
// exposes must not depend on a regular expression's idea of PromQL.
//
// Input (stdin): a JSON array of expressions. Output (stdout): a sorted JSON array of names.
// Exit 1 when an expression does not parse or selects series without a fixed metric name.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "stdin must be a JSON array of PromQL expressions:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	names := map[string]bool{}
	failed := false
	for _, text := range exprs {
		expr, err := p.ParseExpr(text)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%q: %v\n", text, err)
			failed = true
			continue
		}
		parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
			selector, ok := node.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			name := selector.Name
			for _, m := range selector.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				fmt.Fprintf(os.Stderr, "%q: a selector without a fixed metric name: %s\n", text, selector)
				failed = true
				return nil
			}
			names[name] = true
			return nil
		})
	}
	out := make([]string, 0, len(names))
	for name := range names {
		out = append(out, name)
	}
	sort.Strings(out)
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}
