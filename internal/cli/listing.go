package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// encodeJSON writes v to w as indented JSON.
func encodeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printListing is how every listing command (ls, checkpoints, du, hosts,
// machine ls) prints: rows as a JSON array (never null), or a table of
// aligned columns, the tab-separated header and then line(row) per row.
func printListing[R any](w io.Writer, asJSON bool, rows []R, header string, line func(R) string) error {
	if asJSON {
		if rows == nil {
			rows = []R{}
		}
		return encodeJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, line(r))
	}
	return tw.Flush()
}
