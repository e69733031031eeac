// Package config loads and validates tharsis's cluster configuration: one TOML
// file, identical on every node, describing nodes, resources, exports and
// connect priorities. testdata/example.toml is a commented example.
//
// Schema (keys marked * are required; relative paths are relative to the
// directory of the file):
//
//	secret_file = PATH             shared cluster secret (required for replication unless tls_dir)
//	tls_dir = PATH                 replication over mutual TLS 1.3: ca.crt, NODE.crt, NODE.key
//	                               (`tharsis cert`); Load checks that it is a directory
//	[nodes.NAME]                   one per machine; NAME: [a-z0-9][a-z0-9_-]*, <= 63 chars
//	  replication* = "HOST:PORT"   address peers connect to (a specific host, port 1-65535)
//	  state_dir = PATH             default /var/lib/tharsis/NAME
//	  control = PATH               unix socket, default STATE_DIR/control.sock
//	  metrics_listen = "HOST:PORT" serve Prometheus metrics on http://HOST:PORT/metrics; default none
//	[resources.NAME]               one per replicated block device; NAME as for nodes
//	  disk* = { NODE = PATH, ... } the disk on each node that holds it (>= 1)
//	  size = SIZE                  > 0, multiple of 512; default: the smallest disk (Size 0)
//	  log_dir = PATH               default STATE_DIR_OF_NODE/NAME/log
//	  primary = NODE               initial primary, a disk node; default the first by name
//	  connect = { NODE = [NODE, ...] }  fetch-from priorities among disk nodes;
//	                               default: every secondary fetches from the primary
//	  replicated = BOOL            default true; false: no log, writes go to the disk
//	  segment_size = SIZE          log rotation threshold, default 256MiB, >= 1MiB
//	  sync = BOOL                  fdatasync the log on every write, default false
//	  compress = "off" | "zstd"    compress the log a node ships of it (zstd per ~1 MiB frame) to
//	                               fetchers that decode it; default "off"; reload: next connection
//	  ack_secondaries = INT        acknowledge a write only once this many secondaries hold it durably
//	                               in their logs, default 0: asynchronous (at most the nodes that
//	                               fetch from the primary directly)
//	  ack_timeout = DURATION       how long a write waits for them before the primary falls back to
//	                               asynchronous ("10s", the default), or "forever"
//	  verify_interval = DURATION   online verify on each secondary that often ("24h"), default 0: never
//	  retain_max = SIZE            log kept for a node that is behind, default 0: no limit; beyond it
//	                               the node is released (may need a full sync on return)
//	  retain_max_age = DURATION    same for a node unreachable this long ("72h"), default 0: no limit
//	  service_address = "ADDR/LEN" an IPv4 or IPv6 host address with the prefix length of its network
//	                               ("10.0.0.10/24"): the primary holds and announces it, others never do
//	  service_interface = IFACE    required with service_address: the interface that gets it on every
//	                               disk node, or { NODE = IFACE, ... } naming each disk node's interface
//	[[exports.aoe]]                ATA over Ethernet target, served by the primary
//	  resource* = NAME
//	  shelf* = 0..65534            0xffff is the broadcast shelf
//	  slot* = 0..254               0xff is the broadcast slot; shelf.slot is unique
//	  interfaces* = ["eth1", ...]  >= 1
//	  allow_macs = ["00:11:22:33:44:55", ...]  empty: anyone
//	  read_only = BOOL
//	  bufcnt = 1..65535            default 64
//	  write_cache = BOOL           default false: acknowledge only once durable
//	[[exports.nbd]]                NBD export, served by the primary
//	  resource* = NAME
//	  listen = "HOST:PORT"         default "0.0.0.0:10809"
//	  name = STRING                1..4096 bytes, default the resource name
//	  description = STRING
//	  read_only = BOOL
//	  tls = "off"|"on"|"require"   NBD over TLS with the node's certificate (needs tls_dir); default "off"
//	  tls_verify_client = BOOL     only clients with a certificate of the cluster CA; needs tls = "require"
//	[limits]                       what clients may hold of a node; same on every node
//	  nbd_memory = SIZE            NBD payloads in memory, all listeners together; default 256MiB, >= 32MiB
//	  nbd_max_connections = N      per NBD listen address, 1..65535, default 128
//	  nbd_handshake_timeout = DURATION  default 30s
//	  nbd_request_timeout = DURATION    a begun request must arrive whole within it; default 30s
//	  nbd_idle_timeout = DURATION  close NBD clients idle this long; default 0: never
//	  replication_max_connections = N   1..65535, default 128
//	  replication_auth_timeout = DURATION  default 10s
//	  control_max_connections = N  1..65535, default 32
//	  control_idle_timeout = DURATION   idle keep-alive control connections; default 30s
//	  sync_rate = SIZE             bytes per second a full sync copies, over all resources of a node; 0: no limit
//	  fetch_rate = SIZE            bytes per second of log a node fetches (on the network), all resources; 0: none
//
// A SIZE is a byte count: an integer, or a string "NUMBER[ ]UNIT" with a whole
// number, an optional space and a case-insensitive unit: B; K, KiB, M, MiB, G,
// GiB, T, TiB (powers of 1024); KB, MB, GB, TB (powers of 1000). See ParseSize.
// A DURATION is a string such as "30s", "500ms" or "1h30m" (Go's
// time.ParseDuration), or an integer number of seconds; timeouts other than
// nbd_idle_timeout must be more than 0.
//
// Validation reports every problem at once (Errors, sorted by line), each as
// "FILE:LINE: KEY: what is wrong; what to do". Beyond types and ranges it
// checks references (disks, primary, connect lists and exports must name
// defined nodes and resources), unknown keys (with a "did you mean"), unique
// AoE shelf.slot addresses, unique NBD export names per listen address, and
// listen addresses that would clash on one machine (a wildcard host and a
// specific host on the same port, or an NBD listen on a replication address),
// and service addresses (one per resource, no node's replication address, no
// NBD listen of another resource on it).
//
// Diff compares two configurations for live reload.
package config
