# Shared Perl helpers for driving ndmpd through Amanda's own libraries (Debian amanda-common /
# amanda-server). Loaded by the scripts tests/interop/amanda.py runs; the server, user and
# password come from the environment (NDMPD_HOST, NDMPD_USER, NDMPD_PASSWORD).
package NdmpdAmanda;

use lib '/usr/lib/x86_64-linux-gnu/amanda/perl';
use strict;
use warnings;
use Exporter 'import';
use Amanda::Debug;
use Amanda::Config qw( :init );
use Amanda::Device qw( :constants );
use Amanda::Header qw( :constants );
use Amanda::Xfer qw( :constants );
use Amanda::XferServer;
use Amanda::MainLoop;

our @EXPORT = qw( device_url open_device open_changer wait_for dump_header run_xfer write_random read_check
                  say_json );

# Amanda's device layer needs an initialised configuration; a client one needs no amanda.conf.
Amanda::Debug::dbopen("ndmpd-test");
config_init($CONFIG_INIT_CLIENT, undef);
Amanda::Debug::disable_die_override();

# "ndmp:HOST:10000@DRIVE" for the test's server.
sub device_url {
    my ($drive) = @_;
    return "ndmp:$ENV{NDMPD_HOST}:10000\@$drive";
}

# A device on DRIVE logged in as the test user; extra properties as NAME => VALUE.
sub open_device {
    my ($drive, %props) = @_;
    my $dev = Amanda::Device->new(device_url($drive));
    die "device: " . $dev->error_or_status() unless $dev->status() == $DEVICE_STATUS_SUCCESS;
    $dev->property_set("ndmp_username", $ENV{NDMPD_USER} // "ndmp");
    $dev->property_set("ndmp_password", $ENV{NDMPD_PASSWORD} // "ndmp");
    for my $name (keys %props) {
        my $refusal = $dev->property_set($name, $props{$name});      # undef on success
        die "property $name: $refusal\n" if defined $refusal;
    }
    return $dev;
}

# Amanda::Changer for changer NAME (default "robot") of the amanda.conf in the working directory
# (config name "."; tests/interop/amanda.py's write_amanda_conf writes one).
sub open_changer {
    my ($name) = @_;
    require Amanda::Changer;
    config_init($CONFIG_INIT_EXPLICIT_NAME, ".");
    my ($level, @errors) = Amanda::Config::config_errors();
    die "amanda.conf: @errors\n" if $level >= $CFGERR_ERRORS;
    my $chg = Amanda::Changer->new($name // "robot");
    die "changer: $chg\n" if $chg->isa("Amanda::Changer::Error");
    return $chg;
}

# Runs one callback-style Amanda call to completion; returns what its callback got.
#   my ($err, $inventory) = wait_for(sub { $chg->inventory(inventory_cb => $_[0]) });
sub wait_for {
    my ($start) = @_;
    my @result;
    Amanda::MainLoop::call_later(sub { $start->(sub { @result = @_; Amanda::MainLoop::quit(); }) });
    Amanda::MainLoop::run();
    return @result;
}

# An Amanda dump-file header for host/disk.
sub dump_header {
    my ($disk) = @_;
    my $hdr = Amanda::Header->new();
    $hdr->{type} = $Amanda::Header::F_DUMPFILE;
    $hdr->{datestamp} = "20261202000000";
    $hdr->{dumplevel} = 0;
    $hdr->{name} = "localhost";
    $hdr->{disk} = $disk;
    $hdr->{program} = "NDMPD-TEST";
    return $hdr;
}

# Runs a transfer of the given elements to completion; dies with the first error message.
sub run_xfer {
    my (@elements) = @_;
    my $xfer = Amanda::Xfer->new([@elements]);
    my $error;
    $xfer->start(sub {
        my ($src, $msg, $x) = @_;
        if ($msg->{type} == $XMSG_ERROR) {
            $error //= $msg->{message};
        } elsif ($msg->{type} == $XMSG_DONE) {
            Amanda::MainLoop::quit();
        }
    });
    Amanda::MainLoop::run();
    die "transfer: $error\n" if defined $error;
}

# Writes BYTES of Amanda's seeded pseudo-random data as one new tape file; returns its number.
sub write_random {
    my ($dev, $disk, $bytes, $seed) = @_;
    $dev->start_file(dump_header($disk)) or die "start_file: " . $dev->error_or_status();
    my $file = $dev->file();
    run_xfer(Amanda::Xfer::Source::Random->new($bytes, $seed), Amanda::Xfer::Dest::Device->new($dev, 0));
    return $file;
}

# Seeks to tape file FILE, checks its header names DISK and that its data is SEED's pattern
# (Dest::Null verifies the pattern); returns the header.
sub read_check {
    my ($dev, $file, $disk, $seed) = @_;
    my $hdr = $dev->seek_file($file);
    die "seek_file $file: " . $dev->error_or_status() unless $hdr;
    die "file $file holds disk '$hdr->{disk}', not '$disk'\n" unless ($hdr->{disk} // '') eq $disk;
    run_xfer(Amanda::Xfer::Source::Device->new($dev), Amanda::Xfer::Dest::Null->new($seed));
    return $hdr;
}

# One line of JSON for the Python side (flat hash of strings and numbers).
sub say_json {
    my (%h) = @_;
    my @pairs = map {
        my $v = $h{$_};
        $v = defined $v ? ($v =~ /^-?\d+$/ ? $v : '"' . ($v =~ s/(["\\])/\\$1/gr) . '"') : 'null';
        "\"$_\": $v"
    } sort keys %h;
    print "{", join(", ", @pairs), "}\n";
}

1;
