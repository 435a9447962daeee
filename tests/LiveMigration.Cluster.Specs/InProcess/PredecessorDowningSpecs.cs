using Akka.Actor;
using Akka.Cluster;
using LiveMigration.Shared.Hosting;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// A node that comes back from a crash on a fresh port with <c>--replaces OLD</c> (what <c>lsm local up</c> does for a dead
/// Coordinator) has a running member down its crashed incarnation and joins once it is removed, so the cluster moves on at
/// once instead of after the split brain resolver's stable-after (here longer than the test waits), and the new node
/// never sees its predecessor as a member (its singletons then start without the resolver's removal margin). Real ActorSystems on loopback, wired by
/// <see cref="ClusterNodeHosting.WithClusterNode"/> as the processes are; the crash is a terminate without leaving.
/// </summary>
public sealed class PredecessorDowningSpecs(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Hocon = ClusterNodeHosting.FastTestTimings + """

        akka.loglevel = INFO
        # only PredecessorDowning may remove the crashed member within the test's limit
        akka.cluster.split-brain-resolver.stable-after = 120s
        # a terminate is a crash: no leaving, no handing over
        akka.coordinated-shutdown.run-by-actor-system-terminate = off
        """;

    private readonly LoopbackNodes _nodes = new();
    /// <summary>Every member a node's membership events named, from its start.</summary>
    private readonly Dictionary<ActorSystem, System.Collections.Concurrent.ConcurrentBag<Address>> _memberEvents = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _nodes.DisposeAsync();

    [Fact]
    public async Task A_node_restarted_on_a_fresh_port_downs_its_crashed_incarnation_and_the_cluster_converges_without_waiting_for_the_resolver()
    {
        var seed = await StartAsync(seed: null, replaces: null);
        var crashed = await StartAsync(SelfAddress(seed), replaces: null);
        var oldAddress = SelfAddress(crashed);
        await Eventually.HoldsAsync("both Up", () => Task.FromResult(UpMembers(seed).SetEquals([SelfAddress(seed), oldAddress])), TimeSpan.FromSeconds(30));

        await crashed.Terminate();
        await Eventually.HoldsAsync("the seed sees the crashed node unreachable",
            () => Task.FromResult(Akka.Cluster.Cluster.Get(seed).State.Unreachable.Any(m => m.Address.Equals(oldAddress))), TimeSpan.FromSeconds(30));

        var replacement = await StartAsync(SelfAddress(seed), replaces: oldAddress);
        await AssertReplacedAsync(seed, replacement, oldAddress);
    }

    [Fact]
    public async Task A_crashed_incarnation_is_removed_without_waiting_for_the_failure_detector()
    {
        // No member may see the crashed node unreachable within the test's limit: only its quarantine can remove it.
        const string deafDetector = "akka.cluster.failure-detector.acceptable-heartbeat-pause = 120s";
        var seed = await StartAsync(seed: null, replaces: null, deafDetector);
        var crashed = await StartAsync(SelfAddress(seed), replaces: null, deafDetector);
        var oldAddress = SelfAddress(crashed);
        await Eventually.HoldsAsync("both Up", () => Task.FromResult(UpMembers(seed).SetEquals([SelfAddress(seed), oldAddress])), TimeSpan.FromSeconds(30));

        await crashed.Terminate();
        var replacement = await StartAsync(SelfAddress(seed), replaces: oldAddress, deafDetector);
        await AssertReplacedAsync(seed, replacement, oldAddress);
    }

    /// <summary>The crashed incarnation removed, the replacement Up on both members, and never a member in the replacement's eyes.</summary>
    private async Task AssertReplacedAsync(ActorSystem seed, ActorSystem replacement, Address oldAddress)
    {
        await Eventually.HoldsAsync("the crashed incarnation removed and the replacement Up on both members", () => Task.FromResult(
            UpMembers(seed).SetEquals([SelfAddress(seed), SelfAddress(replacement)])
            && UpMembers(replacement).SetEquals([SelfAddress(seed), SelfAddress(replacement)])
            && !Akka.Cluster.Cluster.Get(seed).State.Members.Any(m => m.Address.Equals(oldAddress))), TimeSpan.FromSeconds(30));
        Assert.DoesNotContain(oldAddress, _memberEvents[replacement]);
    }

    private async Task<ActorSystem> StartAsync(Address? seed, Address? replaces, string extraHocon = "")
    {
        var settings = new ClusterNodeSettings
        {
            Hostname = "127.0.0.1",
            Port = 0,
            Seeds = seed is null ? [] : [seed.ToString()],
            Roles = ["coordinator"],
            ExtraHocon = extraHocon + "\n" + Hocon,
            Replaces = replaces?.ToString(),
        };
        var system = await _nodes.StartAsync(settings, akka => akka.AddStartup((system, _) =>
        {
            var seen = new System.Collections.Concurrent.ConcurrentBag<Address>();
            lock (_memberEvents) _memberEvents[system] = seen;
            var recorder = system.ActorOf(Props.Create(() => new MemberRecorder(seen)));
            Akka.Cluster.Cluster.Get(system).Subscribe(recorder, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.IMemberEvent));
        }));
        output.WriteLine($"started {SelfAddress(system)}" + (replaces is null ? "" : $", replacing {replaces}"));
        return system;
    }

    private static Address SelfAddress(ActorSystem system) => Akka.Cluster.Cluster.Get(system).SelfAddress;

    private static HashSet<Address> UpMembers(ActorSystem system) =>
        Akka.Cluster.Cluster.Get(system).State.Members.Where(m => m.Status == MemberStatus.Up).Select(m => m.Address).ToHashSet();

    private sealed class MemberRecorder : ReceiveActor
    {
        public MemberRecorder(System.Collections.Concurrent.ConcurrentBag<Address> seen) =>
            Receive<ClusterEvent.IMemberEvent>(e => seen.Add(e.Member.Address));
    }
}
