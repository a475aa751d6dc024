package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastntp/fastntp/bench"
	"github.com/fastntp/fastntp/internal/ntp"
)

func TestRunErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"probe"}, 2, "want one ADDRESS or ADDRESS:PORT"},
		{[]string{"probe", "localhost"}, 2, "not an IP address with an optional port"},
		{[]string{"probe", "--no-such-flag", "127.0.0.1"}, 2, "unknown flag: --no-such-flag\nRun 'fastntp-bench probe --help'"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--start", "5"}, 2, "unknown flag: --start"},
		{[]string{"probe", "8.8.8.8:123"}, 1, "not an address of this host"},
		{[]string{"ramp"}, 2, "takes one --target"},
		{[]string{"ramp", "--target", "1.2.3.4:123"}, 1, "not an address of this host"},
		{[]string{"fixed", "--target", "a=ftp:x"}, 2, "unknown kind"},
		{[]string{"compare", "--target", "a=chronyd", "--require", "peak>=1.2*b"}, 2, "no target after the first"},
		{[]string{"compare", "--target", "a=chronyd", "--target", "b=chronyd", "--require", "speed>=1.2*b"}, 2, "unknown metric"},
		{[]string{"compare", "--target", "a=chronyd", "--point", "120%"}, 2, "want a percentage"},
		{[]string{"ramp", "--target", "127.0.0.1:123", "--json", "--csv"}, 2, "exclude each other"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--source-network", "198.18.0.0/16"}, 2, "need --interface"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--interface", "lo", "--source-network", "198.18.0.0"}, 2, "--source-network"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--interface", "lo", "--next-hop", "1.2.3.4"}, 2, "want an Ethernet address"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--interface", "lo", "--source-mac", "02:00"}, 2, "--source-mac"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--xdp-peer"}, 2, "need --interface"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--source-mac", "02:00:00:00:00:fe"}, 2, "need --interface"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--target-cpus", "x"}, 2, "--target-cpus"},
		{[]string{"fixed", "--target", "127.0.0.1:123", "--target-host", "localhost"}, 2, "--target-host"},
		{[]string{"help"}, 0, ""},
		{[]string{"ramp", "-h"}, 0, ""},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		code := run(tt.args, &out, &errOut)
		if code != tt.code || !strings.Contains(out.String()+errOut.String(), tt.want) {
			t.Errorf("%v: exit %d, output %q%q; want exit %d mentioning %q", tt.args, code, out.String(), errOut.String(), tt.code, tt.want)
		}
	}
}

// Each command's help goes to stdout and lists that command's options only.
func TestCommandHelp(t *testing.T) {
	tests := []struct {
		command       string
		want, notWant []string
	}{
		{"probe", []string{"--timeout", "ADDRESS[:PORT]"}, []string{"--target", "--rate"}},
		{"ramp", []string{"--target", "--start", "--max-loss", "--plot"}, []string{"--rate", "--rounds", "--require", "--point"}},
		{"fixed", []string{"--target", "--rate", "--duration"}, []string{"--start", "--rounds"}},
		{"compare", []string{"--rounds", "--require", "--point", "--start", "--json-out"}, []string{"--rate ", "--duration"}},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := run([]string{tt.command, "--help"}, &out, &errOut); code != 0 || errOut.Len() > 0 {
			t.Errorf("%s --help: exit %d, stderr %q", tt.command, code, errOut.String())
		}
		for _, w := range tt.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s --help lacks %s:\n%s", tt.command, w, out.String())
			}
		}
		for _, w := range tt.notWant {
			if strings.Contains(out.String(), w) {
				t.Errorf("%s --help lists %s, another command's option:\n%s", tt.command, w, out.String())
			}
		}
	}
}

func TestParseServerAddress(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":      "127.0.0.1:123",
		"127.0.0.1:1123": "127.0.0.1:1123",
		"::1":            "[::1]:123",
		"[::1]":          "[::1]:123",
		"[::1]:1123":     "[::1]:1123",
	} {
		if got, err := parseServerAddress(in); err != nil || got.String() != want {
			t.Errorf("parseServerAddress(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}

// TestProbe checks what probe prints and its exit status, which a script
// or a health check reads: 0 only for synchronized time.
func TestProbe(t *testing.T) {
	for _, tt := range []struct {
		name           string
		leap, stratum  uint8
		code           int
		stdout, stderr string
	}{
		{"synchronized", ntp.LeapNone, 2, 0, "stratum 2", ""},
		{"unsynchronized", ntp.LeapUnsynchronized, 0, 3, "NOT synchronized", "not synchronized"},
		{"kiss-o'-death", ntp.LeapNone, 0, 3, "stratum 0", "not synchronized"},
		{"stratum 16", ntp.LeapNone, 16, 3, "stratum 16", "not synchronized"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			go func() {
				buf := make([]byte, 100)
				n, from, err := conn.ReadFromUDP(buf)
				if err != nil || n < ntp.HeaderSize {
					return
				}
				var h ntp.Header
				h.Parse(buf[:n])
				h = ntp.Header{Leap: tt.leap, Version: 4, Mode: ntp.ModeServer, Stratum: tt.stratum, OriginTime: h.TransmitTime}
				h.ReceiveTime = ntp.TimeFrom(time.Now())
				h.TransmitTime = h.ReceiveTime
				h.Encode(buf)
				conn.WriteToUDP(buf[:ntp.HeaderSize], from)
			}()
			var out, errOut bytes.Buffer
			if code := run([]string{"probe", conn.LocalAddr().String()}, &out, &errOut); code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tt.code, errOut.String())
			}
			if !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errOut.String(), tt.stderr) || (tt.stderr == "" && errOut.Len() > 0) {
				t.Errorf("stdout:\n%s\nstderr:\n%s\nwant %q and %q", out.String(), errOut.String(), tt.stdout, tt.stderr)
			}
		})
	}
}

func TestDrawPlot(t *testing.T) {
	steps := []bench.Step{
		{Target: "a", Rate: 1000, ResponseRate: 1000},
		{Target: "a", Rate: 2000, ResponseRate: 1500},
		{Target: "b", Rate: 1000, ResponseRate: 900},
	}
	for _, name := range []string{"p.png", "p.svg"} {
		path := filepath.Join(t.TempDir(), name)
		if err := drawPlot(path, "test", steps, map[string]string{"a": string(bench.StopSaturated)}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || len(b) < 1000 {
			t.Errorf("%s: %d bytes, %v", name, len(b), err)
		}
	}
	if err := drawPlot(filepath.Join(t.TempDir(), "p.gif"), "", steps, nil); err == nil {
		t.Error("drawPlot accepted a .gif")
	}
}
