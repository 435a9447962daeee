using System.Collections.Concurrent;
using Akka.Actor;
using LiveMigration.Coordinator.Hosts;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Hosting;
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
        var saga = coordinator.ActorOf(Props.Create(() => new Recorder(heard)));
        var stopped = new BlockingCollection<HostRejoined>();
        var stoppedSaga = coordinator.ActorOf(Props.Create(() => new Recorder(stopped)));
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

    private sealed class Recorder : ReceiveActor
    {
        public Recorder(BlockingCollection<HostRejoined> heard) => Receive<HostRejoined>(heard.Add);
    }
}
