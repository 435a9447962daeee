using System.Collections.Concurrent;
using Akka.Actor;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// The Coordinator node's one watcher of hosts that join (instead of a cluster subscription per saga): a host's new
/// incarnation on its old address (a restarted HostNode) is named by the id it last reported from there, so each saga
/// sends again only that host's steps; a host never reported is named unknown. Real ActorSystems on loopback.
/// </summary>
public sealed class HostRejoinWatcherSpecs : IAsyncLifetime
{
    private const string Hocon = ClusterNodeHosting.FastTestTimings + """

        akka.loglevel = INFO
        akka.coordinated-shutdown.run-by-actor-system-terminate = off
        """;

    private readonly LoopbackNodes _nodes = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _nodes.DisposeAsync();

    [Fact]
    public async Task A_restarted_host_is_named_by_the_id_it_reported_from_its_address_and_only_watching_sagas_hear_of_it()
    {
        var coordinator = await StartAsync(seed: null, port: 0, role: "coordinator");
        var directory = new HostDirectory();
        var watcher = coordinator.ActorOf(HostRejoinWatcher.Props(directory, TimeSpan.FromMilliseconds(100)));
        var heard = new BlockingCollection<HostRejoined>();
        var saga = coordinator.ActorOf(Props.Create(() => new Recorder<HostRejoined>(heard)));
        var stopped = new BlockingCollection<HostRejoined>();
        var stoppedSaga = coordinator.ActorOf(Props.Create(() => new Recorder<HostRejoined>(stopped)));
        watcher.Tell(new WatchHostRejoins(saga));
        watcher.Tell(new WatchHostRejoins(stoppedSaga));
        watcher.Tell(new UnwatchHostRejoins(stoppedSaga));

        // A port below the ephemeral range (32768-): the restart binds it again, and no outgoing connection can take it meanwhile.
        var first = await StartAsync(SelfAddress(coordinator), port: FreePortBelowEphemeralRange(), role: "host");
        var address = SelfAddress(first);
        var unknown = Next(heard);
        Assert.Equal(address.ToString(), unknown.Address);
        Assert.Null(unknown.HostId); // no report from it yet: every HSM step may be its
        Assert.False(unknown.SpmCapable);

        directory.Apply(new HostReported("host-7", address.ToString(), false, [], DateTimeOffset.UtcNow));
        await first.Terminate(); // a crash: no leaving
        var again = await StartAsync(SelfAddress(coordinator), port: address.Port!.Value, role: "host");
        Assert.Equal(address, SelfAddress(again));
        var known = Next(heard);
        Assert.Equal("host-7", known.HostId);
        Assert.True(known.Concerns(Shared.Migration.HostRole.Hsm, "host-7"));
        Assert.False(known.Concerns(Shared.Migration.HostRole.Hsm, "host-8"));
        Assert.False(known.Concerns(Shared.Migration.HostRole.Spm, "host-7"));
        Assert.Empty(stopped);
    }

    [Fact]
    public async Task A_saga_hears_once_that_its_vm_stopped_and_at_once_when_it_asks_about_a_vm_known_stopped()
    {
        var coordinator = await StartAsync(seed: null, port: 0, role: "coordinator");
        var watcher = coordinator.ActorOf(HostRejoinWatcher.Props(new HostDirectory(), TimeSpan.FromMilliseconds(100)));
        var (vm, other) = (VmId.New(), VmId.New());
        var migration = MigrationId.New();
        var heard = new BlockingCollection<ReportVmStopped>();
        var saga = coordinator.ActorOf(Props.Create(() => new Recorder<ReportVmStopped>(heard)));
        watcher.Tell(new WatchVmStops(saga, migration, vm));
        VmReport Report(VmId id, bool running) => new(id, "vm", running, []);

        watcher.Tell(new HostReported("host-1", "akka://lsm@h1:1", false, [Report(vm, true), Report(other, false)], DateTimeOffset.UtcNow));
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, false)], [], DateTimeOffset.UtcNow));
        var stopped = Take(heard)!;
        Assert.Equal((migration, vm, "host-1"), (stopped.MigrationId, stopped.Vm, stopped.HostId));
        // reported stopped again (another change of the host): told once
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, false)], [], DateTimeOffset.UtcNow));
        // started and stopped again: told again
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, true)], [], DateTimeOffset.UtcNow));
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, false)], [], DateTimeOffset.UtcNow));
        Assert.Equal(vm, Take(heard)!.Vm);
        Assert.False(heard.TryTake(out var extra, TimeSpan.FromMilliseconds(300)), $"told again: {extra}");

        // A saga that recovers after its VM stopped hears it as it asks; one that stopped watching hears nothing.
        var late = new BlockingCollection<ReportVmStopped>();
        var recovered = coordinator.ActorOf(Props.Create(() => new Recorder<ReportVmStopped>(late)));
        var otherMigration = MigrationId.New();
        watcher.Tell(new WatchVmStops(recovered, otherMigration, other));
        var told = Take(late)!;
        Assert.Equal((otherMigration, other), (told.MigrationId, told.Vm));
        Take(late, empty: true);
        watcher.Tell(new UnwatchHostRejoins(saga));
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, true)], [], DateTimeOffset.UtcNow));
        watcher.Tell(new HostVmsChanged("host-1", "akka://lsm@h1:1", false, [Report(vm, false)], [], DateTimeOffset.UtcNow));
        Assert.False(heard.TryTake(out var afterUnwatch, TimeSpan.FromMilliseconds(300)), $"told after it stopped watching: {afterUnwatch}");
    }

    [Fact]
    public async Task When_the_admission_limits_start_anew_the_sagas_watching_on_this_node_are_told_to_say_what_they_hold()
    {
        var coordinator = await StartAsync(seed: null, port: 0, role: "coordinator");
        var watcher = coordinator.ActorOf(HostRejoinWatcher.Props(new HostDirectory(), TimeSpan.FromMilliseconds(100)));
        var told = new BlockingCollection<AnnounceAdmission>();
        var saga = coordinator.ActorOf(Props.Create(() => new Recorder<AnnounceAdmission>(told)));
        var gone = new BlockingCollection<AnnounceAdmission>();
        var stoppedSaga = coordinator.ActorOf(Props.Create(() => new Recorder<AnnounceAdmission>(gone)));
        watcher.Tell(new WatchHostRejoins(saga));
        watcher.Tell(new WatchHostRejoins(stoppedSaga));
        watcher.Tell(new UnwatchHostRejoins(stoppedSaga));

        // published as the singleton does (itself the sender); again until the watcher's subscription has reached the mediator
        var limits = coordinator.ActorOf(Props.Create(() => new Recorder<AnnounceAdmission>(new BlockingCollection<AnnounceAdmission>())));
        var mediator = Akka.Cluster.Tools.PublishSubscribe.DistributedPubSub.Get(coordinator).Mediator;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        AnnounceAdmission? announced;
        while (!told.TryTake(out announced, TimeSpan.FromMilliseconds(200)))
        {
            Assert.True(DateTime.UtcNow < deadline, "not told within 10 s");
            mediator.Tell(new Akka.Cluster.Tools.PublishSubscribe.Publish(AdmissionRestarted.Topic, new AdmissionRestarted(DateTimeOffset.UtcNow)), limits);
        }
        Assert.Equal(limits, announced.Limits); // the sagas answer the new limits, not their node's proxy
        Assert.Empty(gone);
    }

    private static ReportVmStopped? Take(BlockingCollection<ReportVmStopped> heard, bool empty = false)
    {
        if (empty) return heard.TryTake(out var more, TimeSpan.FromMilliseconds(300)) ? throw new Xunit.Sdk.XunitException($"told twice: {more}") : null;
        return heard.TryTake(out var stopped, TimeSpan.FromSeconds(10)) ? stopped : throw new Xunit.Sdk.XunitException("not told within 10 s");
    }

    private static int FreePortBelowEphemeralRange()
    {
        for (var attempt = 0; attempt < 200; attempt++)
        {
            var port = Random.Shared.Next(20_000, 30_000);
            try
            {
                using var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port);
                probe.Start();
                return port;
            }
            catch (System.Net.Sockets.SocketException)
            {
                // taken: another
            }
        }
        throw new InvalidOperationException("no free port in 20000-29999 on loopback");
    }

    private static HostRejoined Next(BlockingCollection<HostRejoined> heard) =>
        heard.TryTake(out var joined, TimeSpan.FromSeconds(30)) ? joined : throw new Xunit.Sdk.XunitException("no host joined within 30 s");

    private Task<ActorSystem> StartAsync(Address? seed, int port, string role) => _nodes.StartAsync(new ClusterNodeSettings
    {
        Hostname = "127.0.0.1",
        Port = port,
        Seeds = seed is null ? [] : [seed.ToString()],
        Roles = [role],
        ExtraHocon = Hocon,
    });

    private static Address SelfAddress(ActorSystem system) => Akka.Cluster.Cluster.Get(system).SelfAddress;

    /// <summary>A saga's stand-in: what the watcher tells it, of one kind, lands in <paramref name="heard"/>.</summary>
    private sealed class Recorder<T> : ReceiveActor
    {
        public Recorder(BlockingCollection<T> heard) => Receive<T>(heard.Add);
    }
}
