#@ Bucardo customcode (whenrun=before_txn) of the way back, loaded into Bucardo's control database.
#@ Bucardo 5.6 sets session_replication_role = replica on every PostgreSQL target (Bucardo.pm,
#@ disable_triggers), which needs a superuser; the source's role only owns its tables. For the
#@ databases whose Bucardo name starts with @PREFIX@, this replaces that with what the owner may
#@ do: SET CONSTRAINTS ALL DEFERRED (the foreign keys were made DEFERRABLE INITIALLY IMMEDIATE for
#@ the period), so the sync's delete-then-copy of a referenced row is checked at its commit.
#@ Other databases keep Bucardo's own behaviour. Installed once per kid process.
no warnings 'redefine';
if (! $Bucardo::CustomCode::hcbpg_owner_only++) {
    my $disable = \&Bucardo::disable_triggers;
    *Bucardo::disable_triggers = sub {
        my ($self, $sync, $db) = @_;
        if ($db->{name} =~ /^@PREFIX@/) {
            return undef if ! $db->{triggers_enabled};
            $db->{dbh}->do(q{SET CONSTRAINTS ALL DEFERRED});
            $db->{triggers_enabled} = 0;
            return undef;
        }
        return $disable->(@_);
    };
    my $enable = \&Bucardo::enable_triggers;
    *Bucardo::enable_triggers = sub {
        my ($self, $sync) = @_;
        for my $name (keys %{ $sync->{db} }) {
            my $db = $sync->{db}{$name};
            $db->{triggers_enabled} = time if $name =~ /^@PREFIX@/ and ! $db->{triggers_enabled};
        }
        return $enable->(@_);
    };
}
return;
