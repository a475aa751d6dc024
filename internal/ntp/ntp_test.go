package ntp

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
	"time"
)

func TestHeaderRoundTrip(t *testing.T) {
	// Every field distinct, so a swapped or misplaced field shows.
	h := Header{
		Leap: 2, Version: 4, Mode: 3, Stratum: 5, Poll: -6, Precision: -20,
		RootDelay: 0x01020304, RootDispersion: 0x05060708, ReferenceID: 0x090a0b0c,
		ReferenceTime: 0x1112131415161718, OriginTime: 0x2122232425262728,
		ReceiveTime: 0x3132333435363738, TransmitTime: 0x4142434445464748,
	}
	b := make([]byte, HeaderSize)
	h.Encode(b)
	var got Header
	if err := got.Parse(b); err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, h)
	}
	if b[0] != 2<<6|4<<3|3 || b[2] != 0xfa {
		t.Errorf("first word %x", b[:4])
	}
	if err := got.Parse(b[:47]); err != ErrShort {
		t.Errorf("Parse(47 bytes) = %v, want ErrShort", err)
	}
}

func TestTimeConversion(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want Time64
	}{
		{"unix epoch", time.Unix(0, 0), 2208988800 << 32},
		{"half second", time.Unix(0, 500_000_000), 2208988800<<32 | 1<<31},
		{"last second of era 0", time.Date(2036, 2, 7, 6, 28, 15, 0, time.UTC), 0xffffffff << 32},
		{"first second of era 1", time.Date(2036, 2, 7, 6, 28, 16, 0, time.UTC), 0},
		{"era 1", time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC), Time64(uint64(time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC).Unix()+2208988800-1<<32) << 32)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := TimeFrom(tt.t)
			if got != tt.want {
				t.Errorf("TimeFrom = %#x, want %#x", uint64(got), uint64(tt.want))
			}
			// Back again, with pivots on both sides of the rollover.
			for _, pivot := range []time.Time{tt.t, tt.t.Add(-30 * 365 * 24 * time.Hour), tt.t.Add(30 * 365 * 24 * time.Hour)} {
				if back := got.Time(pivot); !back.Equal(tt.t) {
					t.Errorf("Time(pivot %v) = %v, want %v", pivot, back, tt.t)
				}
			}
		})
	}
}

func TestTimeResolution(t *testing.T) {
	now := time.Now()
	for _, ns := range []int64{0, 1, 999, 123456789, 999_999_999} {
		in := time.Unix(now.Unix(), ns)
		if d := TimeFrom(in).Time(now).Sub(in); d.Abs() > time.Nanosecond {
			t.Errorf("%d ns: round trip off by %v", ns, d)
		}
	}
}

func TestShort(t *testing.T) {
	tests := []struct {
		s    float64
		want Short
	}{{0, 0}, {-1, 0}, {math.NaN(), 0}, {1, 1 << 16}, {0.5, 1 << 15}, {1e-9, 1}, {65535.99999, 0xffffffff},
		{65536, 0xffffffff}, {70000, 0xffffffff}}
	for _, tt := range tests {
		if got := ShortFromSeconds(tt.s); got != tt.want {
			t.Errorf("ShortFromSeconds(%v) = %#x, want %#x", tt.s, got, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b, want Short
	}{{0xfffffff0, 0x20, 0xffffffff}, {0xfffffff0, 0x0f, 0xffffffff}, {0xfffffff0, 0x10, 0xffffffff}, {1, 2, 3}, {5, 0, 5}} {
		if got := tt.a.Add(tt.b); got != tt.want {
			t.Errorf("%#x.Add(%#x) = %#x, want %#x", tt.a, tt.b, got, tt.want)
		}
	}
	if got := Short(3 << 15).Seconds(); got != 1.5 {
		t.Errorf("Seconds() = %v, want 1.5", got)
	}
}

func TestTimeIsZero(t *testing.T) {
	if !Time64(0).IsZero() || Time64(1).IsZero() || TimeFrom(time.Now()).IsZero() {
		t.Error("IsZero is true for nothing but 0")
	}
}

func TestParseTrailer(t *testing.T) {
	header := make([]byte, HeaderSize)
	ef := func(typ uint16, n int) []byte {
		b := make([]byte, n)
		binary.BigEndian.PutUint16(b, typ)
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		return b
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{header}, parts...), nil) }
	tests := []struct {
		name    string
		pkt     []byte
		version uint8
		want    Trailer
		err     error
	}{
		{"bare", cat(), 4, Trailer{}, nil},
		{"short", header[:40], 4, Trailer{}, ErrShort},
		{"odd length", cat(make([]byte, 3)), 4, Trailer{}, ErrMalformed},
		{"v3 anything is a MAC", cat(make([]byte, 8)), 3, Trailer{Auth: AuthSymmetric}, nil},
		{"crypto-NAK", cat(make([]byte, 4)), 4, Trailer{Auth: AuthSymmetric}, nil},
		{"MAC 20", cat(make([]byte, 20)), 4, Trailer{Auth: AuthSymmetric}, nil},
		{"MAC 24", cat(make([]byte, 24)), 4, Trailer{Auth: AuthSymmetric}, nil},
		{"16 bytes", cat(ef(0x1, 16)), 4, Trailer{}, ErrMalformed},
		{"EF 28", cat(ef(0x1, 28)), 4, Trailer{ExtensionFields: 1}, nil},
		{"EF 16 + EF 28", cat(ef(0x1, 16), ef(0x2, 28)), 4, Trailer{ExtensionFields: 2}, nil},
		{"EF + MAC", cat(ef(0x1, 16), make([]byte, 20)), 4, Trailer{ExtensionFields: 1, Auth: AuthSymmetric}, nil},
		{"NTS", cat(ef(0x0104, 36)), 4, Trailer{ExtensionFields: 1, Auth: AuthNTS}, nil},
		{"EF length 0", cat(ef(0x1, 28)[:2], make([]byte, 26)), 4, Trailer{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTrailer(tt.pkt, tt.version)
			if err != tt.err || (err == nil && got != tt.want) {
				t.Errorf("ParseTrailer = %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are checked by the run without -race")
	}
	// The header, two extension fields and a MAC: the trailer parser walks
	// the whole chain.
	b := make([]byte, HeaderSize+16+28+20)
	b[0] = 4 << 3
	binary.BigEndian.PutUint16(b[HeaderSize+2:], 16)
	binary.BigEndian.PutUint16(b[HeaderSize+16+2:], 28)
	if tr, err := ParseTrailer(b, 4); err != nil || tr != (Trailer{ExtensionFields: 2, Auth: AuthSymmetric}) {
		t.Fatalf("ParseTrailer = %+v, %v; want two extension fields and a MAC", tr, err)
	}
	var h Header
	if n := testing.AllocsPerRun(100, func() {
		h.Parse(b)
		ParseTrailer(b, 4)
		h.Encode(b)
		_ = TimeFrom(time.Now())
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// FuzzParse checks that no input panics the parsers, that a parsed header
// encodes back to the same bytes, and that a trailer never claims more
// extension fields than fit.
func FuzzParse(f *testing.F) {
	f.Add(make([]byte, 48), uint8(4))
	f.Add(append(make([]byte, 48), 0, 1, 0, 28), uint8(4))
	f.Add(make([]byte, 72), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, version uint8) {
		var h Header
		if h.Parse(b) == nil {
			out := make([]byte, HeaderSize)
			h.Encode(out)
			if !bytes.Equal(out, b[:HeaderSize]) {
				t.Fatalf("round trip changed %x into %x", b[:HeaderSize], out)
			}
		}
		tr, err := ParseTrailer(b, version&7)
		if err == nil && tr.ExtensionFields*minExtensionFieldLength > len(b)-HeaderSize {
			t.Fatalf("%d extension fields in %d bytes", tr.ExtensionFields, len(b)-HeaderSize)
		}
	})
}
