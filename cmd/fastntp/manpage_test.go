package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/spf13/pflag"

	"github.com/fastntp/fastntp/responder"
)

// The manual page is rendered from the flag set that --help prints, so the
// two cannot drift: make deb writes it with
// go test -run '^TestManPage$' -man-page FILE.
var manPageFile = flag.String("man-page", "", "write fastntp(8) to this `file`")

// manPageDescription is the page's DESCRIPTION, in Markdown.
const manPageDescription = `**fastntp** serves NTP to many clients at once with the synchronization state
of a local **chronyd**(8), which it polls over NTP (by default at 127.0.0.1:11123).
It does not discipline the clock: chronyd does, and fastntp answers each request
with the system clock and chronyd's stratum, reference and error bounds, from as
many threads as it is given. When chronyd stops answering, or its clock and the
system clock disagree, fastntp serves replies marked unsynchronized.
rsntp's options keep their names, short forms and meanings.

Installed from its Debian package, fastntp runs as the systemd service
*fastntp.service*, with the options in */etc/default/fastntp*; the package's
*/etc/chrony/conf.d/fastntp.conf* moves chronyd to 127.0.0.1:11123, and
*/usr/lib/sysctl.d/90-fastntp.conf* lets each socket have its 4 MiB receive
buffer.

SIGHUP logs the synchronization state and the counters. The exit status is 0
after SIGINT or SIGTERM, 1 on an error, which is logged, and 2 for options it
cannot take.`

// manPage renders fastntp(8) from the flag set, as Markdown that md2man
// turns into roff. Its date comes from SOURCE_DATE_EPOCH when set, so that
// a package build is reproducible.
func manPage() ([]byte, error) {
	date := time.Now()
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		seconds, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", epoch, err)
		}
		date = time.Unix(seconds, 0).UTC()
	}
	var md bytes.Buffer
	fmt.Fprintf(&md, "# FASTNTP 8 %q %q \"System Manager's Manual\"\n\n", date.Format("January 2006"), "fastntp "+buildVersion())
	md.WriteString("# NAME\n\nfastntp - serve NTP from the system clock to many clients, mirroring chronyd\n\n")
	md.WriteString("# SYNOPSIS\n\n**fastntp** [*options*]\n\n")
	md.WriteString("# DESCRIPTION\n\n" + manPageDescription + "\n\n# OPTIONS\n\n")
	markdown := strings.NewReplacer(`\`, `\\`, "*", `\*`, "_", `\_`, "[", `\[`, "]", `\]`, "<", `\<`)
	newFlagSet(&options{}, &responder.RateLimit{}).VisitAll(func(f *pflag.Flag) {
		name, usage := pflag.UnquoteUsage(f)
		if f.Shorthand != "" {
			fmt.Fprintf(&md, "**-%s**, ", f.Shorthand)
		}
		fmt.Fprintf(&md, "**--%s**", f.Name)
		if name != "" {
			fmt.Fprintf(&md, " *%s*", markdown.Replace(name))
		}
		fmt.Fprintf(&md, "\n: %s", markdown.Replace(usage))
		if d := f.DefValue; d != "" && d != "false" && d != "0" {
			fmt.Fprintf(&md, " (default: %s)", markdown.Replace(d))
		}
		md.WriteString("\n\n")
	})
	md.WriteString("# SEE ALSO\n\n**chronyd**(8), **chrony.conf**(5), **fastntp-bench** **--help**\n")
	return minusSigns(md2man.Render(md.Bytes())), nil
}

// boldSpan is bold text in roff.
var boldSpan = regexp.MustCompile(`\\fB[^\\]*\\fP`)

// minusSigns makes the hyphens in bold text, the options a reader types,
// minus signs: roff renders a plain hyphen as U+2010, which a shell does not
// take for "-" when the option is copied from the page. md2man passes no
// roff through, so this is done on its output.
func minusSigns(page []byte) []byte {
	return boldSpan.ReplaceAllFunc(page, func(span []byte) []byte {
		return bytes.ReplaceAll(span, []byte("-"), []byte(`\-`))
	})
}

func TestManPage(t *testing.T) {
	page, err := manPage()
	if err != nil {
		t.Fatal(err)
	}
	// Every option --help lists is on the page, with its short form.
	newFlagSet(&options{}, &responder.RateLimit{}).VisitAll(func(f *pflag.Flag) {
		want := `\fB\-\-` + strings.ReplaceAll(f.Name, "-", `\-`) + `\fP`
		if f.Shorthand != "" {
			want = `\fB\-` + f.Shorthand + `\fP, ` + want
		}
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("the page lacks %s", want)
		}
	})
	for _, section := range []string{".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS"} {
		if !bytes.Contains(page, []byte(section)) {
			t.Errorf("the page lacks %s", section)
		}
	}
	if *manPageFile != "" {
		if err := os.WriteFile(*manPageFile, page, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
