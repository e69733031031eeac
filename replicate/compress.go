package replicate

// Compression is how a node compresses the log it ships of a resource
// (TOML `compress`), when the fetcher can decode it: a fetcher of this
// release always can; one of an older release gets the log uncompressed.
type Compression string

// Compressions.
const (
	CompressOff  Compression = "off"
	CompressZstd Compression = "zstd" // zstd per frame (about 1 MiB), level "fastest"
)

// Compressing is implemented by Sources whose log may be shipped
// compressed. The ship server asks once per fetch connection, so a changed
// setting applies from the next connection on.
type Compressing interface {
	ShipCompression() Compression
}

// shipCompression is the compression src asks for (CompressOff unless it
// implements Compressing).
func shipCompression(src Source) Compression {
	if cs, ok := src.(Compressing); ok {
		return cs.ShipCompression()
	}
	return CompressOff
}
