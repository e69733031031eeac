package main

import (
	"fmt"
	"strings"
)

// notBuilt maps every verb of MARS's marsadm (the names of its command
// table) and the tharsis verbs planned by open issues to what a command line
// naming it gets while it is not registered in commands: which area builds
// it, or what tharsis does instead. The text is a format with one %s, the
// verb. It is consulted only for names commands lacks, so a verb that gets
// registered simply works.
var notBuilt = map[string]string{}

// marsadmLocal are marsadm's switches with -local and -global variants.
var marsadmLocal = []string{"connect", "disconnect", "pause-fetch", "resume-fetch", "pause-replay", "resume-replay", "pause-sync", "resume-sync"}

func init() {
	for _, g := range []struct {
		why   string
		verbs []string
	}{
		{"`%s` is not built yet: issue 12 (operations) builds attach/detach, up/down, create/delete-resource, live config reload and `config edit`",
			[]string{"attach", "detach", "up", "down", "create-resource", "delete-resource", "reload", "config edit"}},
		{"`%s` is not built yet: issue 13 (monitoring) builds it, with the monitoring-plugins exit codes; `tharsis view` shows the state meanwhile",
			[]string{"check"}},
		{"marsadm's `%s` has no counterpart here: `tharsis view [RES]` shows the role, disk and replication state of every node (`--json` for scripts)",
			[]string{"role", "state", "cstate", "dstate", "status", "show", "show-state", "show-info", "show-errors", "show-gi", "get-gi", "mars-info", "mars-state", "dump"}},
		{"marsadm's `%s` has no counterpart here: the cluster is the [nodes] table of the one config file, the same on every node; edit it there and restart the daemons",
			[]string{"create-cluster", "join-cluster", "leave-cluster", "merge-cluster", "merge-cluster-check", "merge-cluster-list", "split-cluster", "update-cluster", "create-uuid", "lowlevel-delete-host", "lowlevel-ls-host-ips", "lowlevel-set-host-ip"}},
		{"marsadm's `%s` has no counterpart here: sync and fetch rates are `sync_rate` and `fetch_rate` under [limits] in the config",
			[]string{"set-sync-limit-value", "get-sync-limit-value", "set-global-sync-limit-value", "get-global-sync-limit-value"}},
		{"marsadm's `%s` has no counterpart here: the fetch-from priorities are the resource's `connect` in the config",
			[]string{"set-connect-pref-list", "get-connect-pref-list"}},
		{"marsadm's `%s` has no counterpart here: emergency mode is staged on the free space of the log filesystem (README: Emergency mode); there is no limit to set",
			[]string{"set-emergency-limit", "get-emergency-limit", "emergency-limit"}},
		{"marsadm's `%s` has no counterpart here: the log is checksummed with CRC32C and syncs compare SHA-256, always; nothing is compressed",
			[]string{"set-disabled-digests", "set-global-disabled-log-digests", "set-global-disabled-net-digests", "set-global-enabled-log-compressions", "set-global-enabled-net-compressions"}},
		{"marsadm's `%s` has no counterpart here: it ships one unit template, tharsis@NODE.service, installed by `tharsis install-systemd`",
			[]string{"get-systemd-unit", "set-systemd-unit", "get-systemd-want", "set-systemd-want", "systemd-trigger", "systemd-trigger-extern"}},
		{"marsadm's `%s` has no counterpart here: `tharsis log-delete RES` removes the oldest segment every node has replayed",
			[]string{"log-delete-one"}},
		{"marsadm's `%s` has no counterpart here: `tharsis log-delete-all RES` removes every segment all nodes have replayed; `retain_max`/`retain_max_age` in the config release a node that stays behind",
			[]string{"log-purge-all"}},
		{"marsadm's `%s` has no counterpart here: the daemon does this housekeeping itself (log retention every 10 s, `verify_interval`)",
			[]string{"cron"}},
		{"marsadm's `%s` has no counterpart here: run `tharsis invalidate RES` on that node",
			[]string{"invalidate-remote"}},
		{"marsadm's `%s` has no counterpart here: `tharsis resize RES` checks every node's disk before it grows the resource",
			[]string{"check-resize"}},
		{"marsadm's `%s` has no counterpart here: poll `tharsis view --json` for the state to wait for",
			[]string{"wait-cluster", "wait-connect", "wait-resource", "wait-umount"}},
		{"marsadm's `%s` has no counterpart here: it is a MARS internal (its symlink tree, kernel module or guest hooks) with no counterpart here",
			[]string{"err-purge-all", "link-purge-all", "delete-file", "cat", "set-link", "get-link", "hidden-commands", "set-replay", "syncer", "adjust", "new-current-uuid", "outdate", "create-md", "dump-md", "activate-guest", "deactivate-guest"}},
		// Verbs tharsis has; listed so that every marsadm name is known.
		{"`%s` is missing from this build", []string{"primary", "secondary", "invalidate", "resize", "fake-sync", "verify", "view", "join-resource", "leave-resource", "log-rotate", "log-delete", "log-delete-all"}},
	} {
		for _, v := range g.verbs {
			notBuilt[v] = g.why
		}
	}
	for _, v := range marsadmLocal {
		notBuilt[v] = "`%s` is missing from this build"
		for _, scope := range []string{"-local", "-global"} {
			notBuilt[v+scope] = "marsadm's `" + v + scope + "` has no counterpart here: tharsis's switches act on the node the command runs on (marsadm's -local); run `tharsis %s RES` there, on each node you mean"
		}
	}
}

// notBuiltMessage returns what a command line naming the unregistered verb
// name gets, and whether name is a known verb at all.
func notBuiltMessage(name string) (string, bool) {
	why, ok := notBuilt[name]
	if !ok {
		return "", false
	}
	verb := name
	for _, scope := range []string{"-local", "-global"} {
		if base, cut := strings.CutSuffix(name, scope); cut {
			verb = base
		}
	}
	return fmt.Sprintf(why, verb), true
}
