# SyTest homeserver implementation for Hearth (a Rust Matrix homeserver).
# Modelled on SyTest::Homeserver::Dendrite. Starts the `homeserver` binary with
# a generated TOML config: client API on plain HTTP, federation over TLS with a
# certificate signed by SyTest's test CA, trusting that CA for all outgoing
# HTTPS (federation, SyTest's mock push gateway and application services),
# open registration, rate limits off.

use strict;
use warnings;

use Future;

package SyTest::Homeserver::Hearth;
use base qw( SyTest::Homeserver );

use Carp;
use Cwd qw( getcwd );
use File::Path qw( remove_tree make_path );
use SyTest::SSL qw( ensure_ssl_key create_ssl_cert );

sub _init
{
   my $self = shift;
   my ( $args ) = @_;

   $self->{$_} = delete $args->{$_} for qw( binary room_version database_url );
   defined $self->{binary} or croak "Need a Hearth binary";

   $self->{paths} = {};

   $self->SUPER::_init( $args );

   my $idx = $self->{hs_index};
   $self->{ports} = {
      client     => main::alloc_port( "hearth[$idx].client" ),
      federation => main::alloc_port( "hearth[$idx].federation" ),
   };
}

sub server_name
{
   my $self = shift;
   return $self->{bind_host} . ":" . $self->federation_port;
}

sub federation_host { $_[0]->{bind_host} }
sub federation_port { $_[0]->{ports}{federation} }
sub secure_port     { $_[0]->{ports}{federation} }
sub unsecure_port   { $_[0]->{ports}{client} }

sub public_baseurl
{
   my $self = shift;
   return "http://$self->{bind_host}:" . $self->{ports}{client};
}

sub _toml_str
{
   my ( $s ) = @_;
   $s =~ s/\\/\\\\/g;
   $s =~ s/"/\\"/g;
   return "\"$s\"";
}

sub start
{
   my $self = shift;

   my $hs_dir = $self->{hs_dir};
   defined $hs_dir or die "Hearth: no hs_dir (does the --work-directory exist?)\n";
   my $cwd = getcwd;
   my $bind_host = $self->{bind_host};
   # Hearth wants socket addresses (ip:port), not host names.
   my $listen_ip = $bind_host eq "localhost" ? "127.0.0.1" : $bind_host;

   # Fresh data directory on each start.
   my $data_dir = "$hs_dir/data";
   remove_tree( $data_dir ) if -d $data_dir;
   make_path( $data_dir );

   $self->{paths}{tls_cert} = "$hs_dir/tls.crt";
   $self->{paths}{tls_key}  = "$hs_dir/tls.key";
   ensure_ssl_key( $self->{paths}{tls_key} );
   create_ssl_cert( $self->{paths}{tls_cert}, $self->{paths}{tls_key}, $bind_host );

   my @appservices = @{ $self->{app_service_config_files} // [] };

   my @lines = (
      "server_name = " . _toml_str( $self->server_name ),
      "listen = " . _toml_str( "$listen_ip:" . $self->{ports}{client} ),
      "data_dir = " . _toml_str( $data_dir ),
      "public_base_url = " . _toml_str( $self->public_baseurl ),
      "extra_ca_files = [" . _toml_str( "$cwd/keys/ca.crt" ) . "]",
      ( defined $self->{room_version} && length $self->{room_version}
         ? ( "default_room_version = " . _toml_str( $self->{room_version} ) ) : () ),
      "",
      "[registration]",
      "enabled = true",
      "",
      "[rate_limits]",
      "enabled = false",
      "",
      "[federation]",
      "listen = " . _toml_str( "$listen_ip:" . $self->{ports}{federation} ),
      "tls_cert = " . _toml_str( $self->{paths}{tls_cert} ),
      "tls_key = " . _toml_str( $self->{paths}{tls_key} ),
      "trusted_key_servers = []",
      "",
   );
   if( defined $self->{database_url} && length $self->{database_url} ) {
      push @lines, "[database]", "url = " . _toml_str( $self->{database_url} ), "";
   }
   # Hearth coalesces a burst of notifications into one push per window;
   # SyTest expects one push per event. HEARTH_PUSH_COALESCE_MS=0 turns the
   # window off (unset: Hearth's default).
   if( defined $ENV{HEARTH_PUSH_COALESCE_MS} && length $ENV{HEARTH_PUSH_COALESCE_MS} ) {
      push @lines, "[push]", "coalesce_ms = " . ( 0 + $ENV{HEARTH_PUSH_COALESCE_MS} ), "";
   }
   if( @appservices ) {
      push @lines, "[appservices]",
         "registrations = [" . join( ", ", map { _toml_str( $_ ) } @appservices ) . "]", "";
   }

   $self->{paths}{config} = $self->write_file( "hearth.toml" => join( "\n", @lines ) );

   my $log = "$hs_dir/hearth.log";
   $self->{paths}{log} = $log;

   my $output = $self->{output};
   my $idx = $self->{hs_index};

   my @command = ( $self->{binary}, '--config', $self->{paths}{config}, 'serve' );
   $output->diag( "Starting Hearth with: @command (log: $log)" );

   # exec through sh so that the server's output goes to a log file that
   # outlives the run; the exec keeps the PID that SyTest kills.
   my $shell = 'exec "$@" >>' . _sh_quote( $log ) . ' 2>&1';

   return $self->_start_process_and_await_connectable(
      setup => [
         env => {
            %ENV,
            NO_COLOR => 1,
            RUST_LOG => $ENV{HEARTH_RUST_LOG} // $ENV{RUST_LOG} // "info",
         },
      ],
      command => [ "/bin/sh", "-c", $shell, "hearth", @command ],
      connect_host => $bind_host,
      connect_port => $self->{ports}{client},
      name => "hearth-$idx",
   )->then( sub {
      # the federation listener comes up separately
      $self->await_connectable( $bind_host, $self->{ports}{federation} );
   })->else( sub {
      die "Unable to start Hearth: $_[0]\n";
   })->on_done( sub {
      $output->diag( "Started Hearth server-$idx" );
   });
}

sub _sh_quote
{
   my ( $s ) = @_;
   $s =~ s/'/'\\''/g;
   return "'$s'";
}

1;
