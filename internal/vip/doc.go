// Package vip moves a service address between nodes, heartbeat IPaddr
// style: Add puts an IP address on an interface, Remove takes it off, and
// Announce tells the segment where it now lives, so that clients (whose
// neighbour caches still point at the old holder) send to this node at once.
//
// Addresses are changed over rtnetlink (github.com/vishvananda/netlink). An
// IPv6 address is added without duplicate address detection (IFA_F_NODAD):
// the node that held it removed it first, and a tentative address could not
// be used for a second or more. It is also added deprecated (preferred
// lifetime 0): it accepts connections, but source address selection never
// picks it for the node's own, which would break when it moves. An IPv4
// address in the subnet of the interface's own address is a secondary
// address, never a source either.
//
// Announcements are Ethernet frames built here and sent on an AF_PACKET
// socket (github.com/mdlayher/packet):
//
//	IPv4, a gratuitous ARP request (RFC 5227 "ARP Announcement"), 60 bytes:
//	  Ethernet  dst ff:ff:ff:ff:ff:ff  src MAC  type 0x0806
//	  ARP       htype 1  ptype 0x0800  hlen 6  plen 4  op 1 (request)
//	            sender MAC, sender IP = ADDR, target MAC 00:00:00:00:00:00,
//	            target IP = ADDR; zero padding to the 60-byte minimum
//
//	IPv6, an unsolicited neighbour advertisement (RFC 4861 7.2.6), 86 bytes:
//	  Ethernet  dst 33:33:00:00:00:01  src MAC  type 0x86dd
//	  IPv6      payload 32  next header 58 (ICMPv6)  hop limit 255
//	            src ADDR  dst ff02::1 (all nodes)
//	  ICMPv6    type 136  code 0  checksum  flags O (override; not R, not S)
//	            target ADDR; option 2 (target link-layer address) len 1: MAC
//
// Linux updates an existing neighbour entry from either (a gratuitous ARP
// regardless of arp_accept, an advertisement with O set regardless of its
// age); it creates no new entry, which is what a client that never talked
// to the address needs anyway: it asks.
package vip
