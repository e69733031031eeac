module github.com/tharsis/tharsis

go 1.26.8

require (
	github.com/BurntSushi/toml v1.5.0
	golang.org/x/sys v0.30.0
)
