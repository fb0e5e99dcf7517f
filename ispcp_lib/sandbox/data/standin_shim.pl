#!/usr/bin/perl
# =====================================================================================
#  TEST SCAFFOLDING - NOT ispCP.
#  The sandbox's @PROGRAM@ in a lab server: a relay shim written by
#  ispcp_lib.sandbox.standin_relay. The stand-in itself (Python) runs on the machine
#  that built the world; this shim hands it argv, cwd, a few variables and the
#  terminal over the unix socket @SOCKET@ of its own tree, and exits with its status.
#  The server needs nothing but core Perl for it.
# =====================================================================================
use strict;
use warnings;
use Cwd qw(getcwd);
use File::Spec;
use IO::Select;
use IO::Socket::UNIX;
use POSIX qw(:termios_h :signal_h);

my $PROGRAM = '@PROGRAM@';
my $REL     = '@REL@';        # the shim's path below its tree's root
my $SOCKET  = '@SOCKET@';     # the relay's socket below that root
my $GRACE   = 10;             # seconds to wait for the status once a signal was passed on

# The tree is the shim's own path minus $REL: "/" inside the server, the server's root on this machine.
my $self = File::Spec->rel2abs($0);
my $root = $self;
unless ($root =~ s{/\Q$REL\E\z}{}) {
    print STDERR "This is the sandbox's $PROGRAM relay shim (TEST SCAFFOLDING, not ispCP).\n",
      "It must sit at /$REL of its tree, not at $self.\n";
    exit 2;
}
my $sock = IO::Socket::UNIX->new(Peer => "$root/$SOCKET");
unless ($sock) {
    print STDERR "This is the sandbox's $PROGRAM relay shim (TEST SCAFFOLDING, not ispCP).\n",
      "Nothing answers on $root/$SOCKET ($!): the sandbox world's services are not running.\n";
    exit 2;
}
$SIG{PIPE} = 'IGNORE';    # a dead terminal or relay shows as a write error, not as a kill

# One frame: "<type> <length>\n" and exactly <length> raw bytes.
sub send_frame {
    my ($type, $data) = @_;
    my $msg = $type . ' ' . length($data) . "\n" . $data;
    while (length $msg) {
        my $n = syswrite($sock, $msg);
        if (!defined $n) {
            next if $!{EINTR};
            return 0;
        }
        substr($msg, 0, $n, '');
    }
    return 1;
}

sub put {
    my ($fh, $data) = @_;
    while (length $data) {
        my $n = syswrite($fh, $data);
        if (!defined $n) {
            next if $!{EINTR};
            return;    # the terminal hung up: the output has nowhere to go
        }
        substr($data, 0, $n, '');
    }
}

# struct winsize through TIOCGWINSZ (0x5413 on Linux x86 and arm); 24x80 when it cannot be read.
sub window_size {
    my $ws = "\0" x 8;
    return '24 80' unless ioctl(STDIN, 0x5413, $ws);
    my ($rows, $cols) = unpack('S2', $ws);
    return $rows && $cols ? "$rows $cols" : '24 80';
}

my $tty = -t STDIN;
send_frame('P', $PROGRAM);
send_frame('D', $root eq '' ? '/' : $root);
send_frame('C', getcwd());
send_frame('A', $_) for @ARGV;
for my $name (qw(TERM ISPCP_SANDBOX_SLEEP_SCALE)) {
    send_frame('E', "$name=$ENV{$name}") if defined $ENV{$name};
}
send_frame('T', window_size()) if $tty;
send_frame('G', '') or lost();

# Raw mode: the stand-in's own pseudo-terminal on the other side does the echo, line editing and signals.
my $saved;
if ($tty) {
    my $term = POSIX::Termios->new;
    if ($term->getattr(0)) {
        $saved = POSIX::Termios->new;
        $saved->getattr(0);
        $term->setiflag($term->getiflag & ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON));
        $term->setoflag($term->getoflag & ~OPOST);
        $term->setlflag($term->getlflag & ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN));
        $term->setcflag(($term->getcflag & ~(CSIZE | PARENB)) | CS8);
        $term->setcc(VMIN,  1);
        $term->setcc(VTIME, 0);
        $term->setattr(0, TCSANOW);
    }
}

sub restore {
    $saved->setattr(0, TCSADRAIN) if $saved;
    $saved = undef;
}

my %SIGNALS = (HUP => SIGHUP, INT => SIGINT, TERM => SIGTERM, QUIT => SIGQUIT);
my ($pending, $signalled, $since);
$SIG{$_} = sub { $pending = $SIGNALS{ $_[0] } }
  for keys %SIGNALS;    # only noted here: the main loop sends it between two frames

sub lost {
    restore();
    exit 128 + $signalled if $signalled;
    print STDERR "\n[sandbox relay shim] the connection to the stand-in's relay was lost\n";
    exit 255;
}

sub finish {
    my ($status) = @_;
    restore();
    if ($status =~ /\Asignal (\d+)\z/) {    # die of the stand-in's signal, as its parent would see it
        $SIG{$_} = 'DEFAULT' for keys %SIGNALS;
        kill $1, $$;
        exit 128 + $1;
    }
    exit($status =~ /\Aexit (\d+)\z/ ? $1 : 255);
}

my $select = IO::Select->new($sock, \*STDIN);
my $in     = '';
while (1) {
    if ($pending) {
        ($signalled, $since, $pending) = ($pending, time, undef);
        send_frame('K', $signalled) or lost();
    }
    lost() if $signalled && time - $since > $GRACE;
    for my $fh ($select->can_read($signalled ? 1 : undef)) {
        if (fileno($fh) == fileno($sock)) {
            my $n = sysread($sock, $in, 65536, length $in);
            next if !defined $n && $!{EINTR};
            lost() unless $n;
            while ($in =~ /\A(\w) (\d+)\n/) {
                my ($type, $start, $len) = ($1, length($&), $2);
                last if length($in) < $start + $len;
                my $data = substr($in, $start, $len);
                substr($in, 0, $start + $len, '');
                if    ($type eq '1') { put(\*STDOUT, $data) }
                elsif ($type eq '2') { put(\*STDERR, $data) }
                elsif ($type eq 'X') { finish($data) }
            }
            next;
        }
        my $n = sysread(STDIN, my $data, 65536);
        next if !defined $n && $!{EINTR};
        if ($n) {
            send_frame('I', $data) or lost();
            next;
        }
        # End of input. A terminal in raw mode only reads that when it hung up: the session is over.
        $select->remove(\*STDIN);
        if ($tty) { $pending ||= SIGHUP }
        else      { send_frame('Z', '') or lost() }
    }
}
