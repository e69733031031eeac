// Command tharsis is the tharsis node daemon (`tharsis run`), its demo
// (`tharsis demo`) and the admin CLI (marsadm-style verbs, `view`,
// `config check`, `aoe-stat`). Run `tharsis help` for the verbs.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tharsis:", err)
		os.Exit(exitCode(err))
	}
}
