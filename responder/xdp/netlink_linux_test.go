package xdp

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// attribute returns a netlink attribute of the given type and value.
func attribute(attrType uint16, value []byte) []byte {
	b := make([]byte, 4, 4+len(value)+3)
	binary.NativeEndian.PutUint16(b, uint16(4+len(value)))
	binary.NativeEndian.PutUint16(b[2:], attrType)
	b = append(b, value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func TestNestedU32(t *testing.T) {
	for _, tc := range []struct {
		name  string
		attrs []byte
		want  uint32
	}{
		{"none", nil, 0},
		{"program ID", append(attribute(unix.IFLA_XDP_ATTACHED, []byte{1}), attribute(unix.IFLA_XDP_PROG_ID, u32(42))...), 42},
		{"nested flag", attribute(unix.IFLA_XDP_PROG_ID|unix.NLA_F_NESTED, u32(7)), 7},
		{"other attributes only", attribute(unix.IFLA_XDP_ATTACHED, []byte{0}), 0},
		{"short value", attribute(unix.IFLA_XDP_PROG_ID, []byte{1, 2}), 0},
		{"length beyond the data", []byte{200, 0, 4, 0, 1, 0, 0, 0}, 0},
		{"length under a header", []byte{2, 0, 4, 0, 1, 0, 0, 0}, 0},
	} {
		if got := nestedU32(tc.attrs, unix.IFLA_XDP_PROG_ID); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// FuzzNestedU32 checks that no attributes make the parser fail or loop.
func FuzzNestedU32(f *testing.F) {
	f.Add(attribute(unix.IFLA_XDP_PROG_ID, u32(42)))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		nestedU32(b, unix.IFLA_XDP_PROG_ID)
	})
}
