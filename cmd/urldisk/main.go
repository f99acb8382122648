// Command urldisk: disks whose durable state is a URL. See README.md.
package main

import (
	"os"

	"github.com/urldisk/urldisk/internal/cli"
)

func main() { os.Exit(cli.Main()) }
