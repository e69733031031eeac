module github.com/tharsis/tharsis

go 1.26.8

require (
	github.com/BurntSushi/toml v1.5.0
	github.com/cockroachdb/datadriven v1.0.3
	github.com/vishvananda/netlink v1.3.1
	golang.org/x/sys v0.30.0
	golang.org/x/time v0.5.0
)

require (
	github.com/pmezard/go-difflib v1.0.0 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
)

require (
	github.com/josharian/native v1.1.0 // indirect
	github.com/mdlayher/packet v1.1.2
	github.com/mdlayher/socket v0.4.1 // indirect
	golang.org/x/net v0.9.0
	golang.org/x/sync v0.1.0
)
