using LiveMigration.Cli.Api;
using LiveMigration.Cli.Commands;
using Spectre.Console.Cli;

// `lsm`, the operator's CLI: a thin client of the Coordinator's HTTP API. Exit codes: 0 ok, 1 the operation
// failed, 2 bad usage or refused input, 3 API unreachable (see ExitCodes).
using var interrupted = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    // The first Ctrl+C stops waiting; whatever was started keeps running in the cluster.
    e.Cancel = true;
    interrupted.Cancel();
};

var app = new CommandApp();
app.Configure(config =>
{
    config.SetApplicationName("lsm");
    config.Settings.StrictParsing = true;
    config.SetExceptionHandler((exception, _) =>
    {
        switch (exception)
        {
            case CliFailure failure:
                Output.Error(failure.Message);
                return failure.ExitCode;
            case CommandAppException usage:
                Output.Error(usage.Message);
                return ExitCodes.BadUsage;
            case OperationCanceledException when interrupted.IsCancellationRequested:
                Output.Error("interrupted; anything already started keeps running in the cluster");
                return ExitCodes.OperationFailed;
            default:
                // Never a stack trace: the message is what the operator can act on.
                Output.Error($"{exception.GetType().Name}: {exception.Message}");
                return ExitCodes.OperationFailed;
        }
    });
    config.AddExample("cluster", "show");
    config.AddExample("vms");
    config.AddExample("migrate", "2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11", "--to", "domain-b", "--wait");
    config.AddExample("migration", "show", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99", "--json");

    // Branches without a settings type: Spectre shows a branch's inherited options in no subcommand's help, and every
    // command's settings carry the global options (--api, --token, --json) themselves.
    config.AddBranch("cluster", cluster =>
    {
        cluster.SetDescription("The Akka.NET cluster: members, leave/down/join, down-unreachable, tail, sharding");
        cluster.AddCommand<ClusterShowCommand>("show")
            .WithDescription("Every member with its status and roles, the leader, the unreachable members")
            .WithExample("cluster", "show")
            .WithExample("cluster", "show", "--json");
        cluster.AddCommand<ClusterLeaveCommand>("leave")
            .WithDescription("Ask a member to leave the cluster gracefully (its singletons and shards move first)")
            .WithExample("cluster", "leave", "akka.ssl.tcp://lsm@127.0.0.1:4054");
        cluster.AddCommand<ClusterDownCommand>("down")
            .WithDescription("Mark a member down (for a crashed node that will not come back by itself)")
            .WithExample("cluster", "down", "akka.ssl.tcp://lsm@127.0.0.1:4054");
        cluster.AddCommand<ClusterJoinCommand>("join")
            .WithDescription("Make the API's node join the cluster at that member's address")
            .WithExample("cluster", "join", "akka.ssl.tcp://lsm@127.0.0.1:4053");
        cluster.AddCommand<ClusterDownUnreachableCommand>("down-unreachable")
            .WithDescription("Mark every member that is unreachable now down (crashed nodes that will not come back)")
            .WithExample("cluster", "down-unreachable");
        cluster.AddCommand<ClusterTailCommand>("tail")
            .WithDescription("The members, then membership and reachability events as they happen, until Ctrl+C or --seconds")
            .WithExample("cluster", "tail")
            .WithExample("cluster", "tail", "--seconds", "60", "--json");
        cluster.AddBranch("sharding", sharding =>
        {
            sharding.SetDescription("Cluster sharding");
            sharding.AddCommand<ShardingRegionsCommand>("regions")
                .WithDescription("The shard region types and, per node, their shard and entity counts")
                .WithExample("cluster", "sharding", "regions");
            sharding.AddCommand<ShardingRegionStatsCommand>("region-stats")
                .WithDescription("One region's shards per node with the entity count of each")
                .WithExample("cluster", "sharding", "region-stats", "migration");
        });
    });
    config.AddCommand<HostsCommand>("hosts")
        .WithDescription("The hosts: address, SPM capability, cluster status, VMs")
        .WithExample("hosts");
    config.AddCommand<DomainsCommand>("domains")
        .WithDescription("The storage domains with their capacity and free space")
        .WithExample("domains", "--json");
    config.AddCommand<VmsCommand>("vms")
        .WithDescription("The VMs with their disks and the domain of each layer of their chains")
        .WithExample("vms");
    config.AddBranch<GlobalSettings>("host", host =>
    {
        host.SetDescription("One host: forget one gone for good");
        host.AddCommand<HostForgetCommand>("forget")
            .WithDescription("Forget a host gone for good: its VMs leave the lists and it holds no domain inactive (refused while it is a cluster member)")
            .WithExample("host", "forget", "host-3");
    });
    config.AddBranch<GlobalSettings>("domain", domain =>
    {
        domain.SetDescription("Storage domains: create");
        domain.AddCommand<DomainCreateCommand>("create")
            .WithDescription("Create a file storage domain under a folder every host sees; every host attaches it")
            .WithExample("domain", "create", "fast-ssd", "--path", "/srv/lsm/domains", "--capacity", "20GiB");
    });
    config.AddBranch<GlobalSettings>("vm", vm =>
    {
        vm.SetDescription("One VM: show, create, start, stop, snapshot, guest I/O and its verification");
        vm.AddCommand<VmShowCommand>("show")
            .WithDescription("The VM's state and each disk's chain: which volume on which domain")
            .WithExample("vm", "show", "web-01");
        vm.AddCommand<VmCreateCommand>("create")
            .WithDescription("Create a VM's disks (SIZE@DOMAIN, optionally with N snapshots, a qcow2 base, a preallocated base) and start it on a host")
            .WithExample("vm", "create", "web-01", "--host", "host-1", "--disk", "1GiB@fast-ssd:snapshots=2", "--disk", "512MiB@fast-ssd:format=qcow2:preallocated");
        vm.AddCommand<VmStartCommand>("start")
            .WithDescription("Start a stopped VM on the chains it had")
            .WithExample("vm", "start", "web-01");
        vm.AddCommand<VmStopCommand>("stop")
            .WithDescription("Stop a VM (refused while one of its disks is migrating); it stays listed")
            .WithExample("vm", "stop", "web-01");
        vm.AddCommand<VmSnapshotCommand>("snapshot")
            .WithDescription("Live snapshot: each disk gets a new leaf volume, its chain one longer")
            .WithExample("vm", "snapshot", "web-01");
        vm.AddCommand<VmIoCommand>("io")
            .WithDescription("Run the guest workload on the VM's disks in the background on its host (or --status); it flushes every 100 ms unless told otherwise")
            .WithExample("vm", "io", "web-01", "--rate", "20MiB/s", "--seconds", "60")
            .WithExample("vm", "io", "web-01", "--rate", "20MiB/s", "--fua")
            .WithExample("vm", "io", "web-01", "--status");
        vm.AddCommand<VmVerifyCommand>("verify")
            .WithDescription("Read back the guest's writes: exit 1 when a durable (flushed) write is lost; unflushed ones missing are reported in doubt")
            .WithExample("vm", "verify", "web-01");
    });
    config.AddCommand<MigrateCommand>("migrate")
        .WithDescription("Move a running VM's disks to another storage domain")
        .WithExample("migrate", "2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11", "--to", "domain-b", "--wait")
        .WithExample("migrate", "2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11", "--to", "domain-b", "--disk", "5b6e1c7a-0d2f-4b8e-8c1d-2a3b4c5d6e7f",
            "--strategy", "post-copy", "--bandwidth", "100MiB/s", "--copy-mode", "write-blocking");
    config.AddCommand<MigrationsCommand>("migrations")
        .WithDescription("Every migration the Coordinator knows (also finished ones, across restarts), newest first")
        .WithExample("migrations")
        .WithExample("migrations", "--active", "--json");
    config.AddBranch("migration", migration =>
    {
        migration.SetDescription("One migration: show, cancel, resume, abandon, set-speed");
        migration.AddCommand<MigrationShowCommand>("show")
            .WithDescription("Status, progress of each disk, every step with its times and errors")
            .WithExample("migration", "show", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99");
        migration.AddCommand<MigrationWatchCommand>("watch")
            .WithDescription("Follow a migration live (a progress bar per disk, its steps) until it ends; exit 0 only when it completed")
            .WithExample("migration", "watch", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99")
            .WithExample("migration", "watch", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99", "--json");
        migration.AddCommand<MigrationCancelCommand>("cancel")
            .WithDescription("Stop a migration before its point of no return and roll it back")
            .WithExample("migration", "cancel", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99");
        migration.AddCommand<MigrationResumeCommand>("resume")
            .WithDescription("Retry a suspended migration from the step that failed")
            .WithExample("migration", "resume", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99");
        migration.AddCommand<MigrationAbandonCommand>("abandon")
            .WithDescription("Give up a suspended migration, leaving the disks where they run now")
            .WithExample("migration", "abandon", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99");
        migration.AddCommand<MigrationSetSpeedCommand>("set-speed")
            .WithDescription("Change a running migration's bandwidth limit; the running copy takes it at once (0 = unlimited)")
            .WithExample("migration", "set-speed", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99", "50MiB/s")
            .WithExample("migration", "set-speed", "7d0b5f0e-2c1a-4d8e-9a51-3f3e2b1c0a99", "0");
    });
    config.AddBranch("tls", tls =>
    {
        tls.SetDescription("The cluster's private CA and its nodes' certificates, for a cluster of several machines (lsm local up makes its own)");
        tls.AddCommand<TlsCaCommand>("ca")
            .WithDescription("Make a new CA (ca.crt, ca.key) in a folder that holds none")
            .WithExample("tls", "ca", "--dir", "/root/lsm-ca");
        tls.AddCommand<TlsIssueCommand>("issue")
            .WithDescription("Issue (or renew) a node's certificate and key, signed by the folder's CA")
            .WithExample("tls", "issue", "host-1", "--dir", "/root/lsm-ca", "--address", "10.0.0.11");
    });
    config.AddCommand<AuditCommand>("audit")
        .WithDescription("Who changed what through the API: every changing request with its time, role, client and outcome, newest first (operator token)")
        .WithExample("audit")
        .WithExample("audit", "--since", "2026-12-02T15:00:00Z", "--limit", "100", "--json");
    config.AddBranch("local", local =>
    {
        local.SetDescription("A local cluster for trying and testing: one Coordinator and N hosts on this machine");
        local.AddCommand<LocalUpCommand>("up")
            .WithDescription("Start a Coordinator and hosts host-1…host-N on loopback in the background; returns when the cluster is up")
            .WithExample("local", "up")
            .WithExample("local", "up", "--hosts", "3", "--data-dir", "/tmp/lsm", "--api-port", "9111");
        local.AddCommand<LocalStatusCommand>("status")
            .WithDescription("The local cluster's processes: name, pid, alive, cluster address, and its API URL")
            .WithExample("local", "status");
        local.AddCommand<LocalDownCommand>("down")
            .WithDescription("Stop the local cluster's processes and the VMs they ran; returns when all are gone")
            .WithExample("local", "down");
    });
});
return await app.RunAsync(args, interrupted.Token);
