module github.com/tharsis/tharsis

go 1.26.8

require golang.org/x/sys v0.30.0
