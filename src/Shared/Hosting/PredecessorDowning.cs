using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Akka.Remote;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// Has the member this process replaces (<c>--replaces ADDRESS</c>), a crashed incarnation of the same node that came
/// back on a fresh port, downed and removed before this node joins. Its peers still count it as a member until someone
/// downs it, and while it stays its singletons stay with it. Whoever restarts a node passes its old address only after
/// making sure its process is gone (<c>lsm local up</c> checks the pid), so downing it takes nothing live away.
/// </summary>
/// <remarks>
/// Why before joining: a node that is Up while its predecessor is still a (downed) member sees it removed later as a
/// downed member's removal, for which the singleton managers wait the split brain resolver's margin (stable-after, 20 s)
/// before they start a singleton; a node that joins after the removal starts them at once. Measured in bench
/// control-plane's recovery: 25–31 s until a SIGKILLed Coordinator's 1,000 sagas moved again when the new node was Up
/// first, 7–14 s when it was not. So this node asks the running members (its seeds) to down the predecessor
/// (<see cref="PredecessorWatch"/>) and joins once one says it is gone; when none answers in <see cref="AskLimit"/>
/// (no member runs, or none knows it) it joins anyway and downs the predecessor itself once it is a member.
/// Why a fresh port rather than the old one: a process that comes back on its old address while its peers still redial
/// the old incarnation can meet one of those dials in flight; Akka.Remote then drops the dial's writer but not its
/// connection, and the new process reads a connection nobody writes on (README: the fault matrix found it).
/// </remarks>
public sealed class PredecessorDowning : ReceiveActor, IWithTimers
{
    private sealed record AskAgain;
    private sealed record StopAsking;

    public static readonly TimeSpan AskInterval = TimeSpan.FromMilliseconds(250);
    public static readonly TimeSpan AskLimit = TimeSpan.FromSeconds(15);

    private readonly Cluster _cluster = Cluster.Get(Context.System);
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Address _predecessor;
    private readonly IReadOnlyList<Address> _seeds;
    private bool _joined;
    private bool _downed;

    public ITimerScheduler Timers { get; set; } = null!;

    public PredecessorDowning(Address predecessor, IReadOnlyList<Address> seeds)
    {
        _predecessor = predecessor;
        _seeds = seeds;
        Receive<AskAgain>(_ =>
        {
            foreach (var seed in Asked())
                Context.ActorSelection(new RootActorPath(seed) / "user" / PredecessorWatch.Name).Tell(new DownPredecessor(_predecessor.ToString()));
        });
        Receive<PredecessorGone>(gone => gone.Address == _predecessor.ToString(), _ =>
        {
            if (_joined) return;
            _log.Info("The predecessor {0} is downed and removed by a running member; joining the cluster", _predecessor);
            Join();
        });
        Receive<StopAsking>(_ =>
        {
            if (_joined) return;
            _log.Warning("No running member answered for the predecessor {0} within {1} s; joining, and downing it once a member", _predecessor, AskLimit.TotalSeconds);
            Join();
        });
        // The events' own members, not Cluster.State: that view is updated by another subscriber and may lag behind them.
        Receive<ClusterEvent.CurrentClusterState>(state =>
        {
            foreach (var member in state.Members) Consider(member);
        });
        Receive<ClusterEvent.MemberRemoved>(removed => removed.Member.Address.Equals(_predecessor), removed =>
        {
            _log.Info("The predecessor {0} is removed from the cluster", _predecessor);
            Context.Stop(Self);
        });
        Receive<ClusterEvent.IMemberEvent>(e => Consider(e.Member));
    }

    public static Props Props(Address predecessor, IReadOnlyList<Address> seeds) =>
        Akka.Actor.Props.Create(() => new PredecessorDowning(predecessor, seeds));

    /// <summary>The seeds that can answer: not this node, not the predecessor.</summary>
    private IEnumerable<Address> Asked() => _seeds.Where(s => !s.Equals(_predecessor) && !s.Equals(_cluster.SelfAddress));

    protected override void PreStart()
    {
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.IMemberEvent));
        if (!Asked().Any())
        {
            Join();
            return;
        }
        Self.Tell(new AskAgain());
        Timers.StartPeriodicTimer("ask", new AskAgain(), AskInterval);
        Timers.StartSingleTimer("limit", new StopAsking(), AskLimit);
    }

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    private void Join()
    {
        _joined = true;
        Timers.CancelAll();
        _cluster.JoinSeedNodes(_seeds);
    }

    /// <summary>Member events reach this actor only once this node got the cluster's gossip, i.e. is a member itself: a Down then takes effect.</summary>
    private void Consider(Member member)
    {
        if (_downed || !member.Address.Equals(_predecessor) || member.Status is MemberStatus.Down or MemberStatus.Removed) return;
        _log.Warning("Downing {0} ({1}), the crashed incarnation this node replaces (--replaces), so the cluster can move on without it",
            member.Address, member.Status);
        _cluster.Down(member.Address);
        DeadIncarnation.Quarantine(Context.System, member);
        _downed = true;
    }
}

/// <summary>
/// Tells this node's cluster that a downed incarnation is gone for good, so it is removed now instead of once the failure
/// detector misses its heartbeats. Akka removes a downed member only when some member sees it unreachable: after a
/// SIGKILL that waited out the acceptable heartbeat pause (removed 2.6–3.9 s after the down in bench control-plane's
/// recovery and the crash tests; 0.3 s with the quarantine). Quarantining its uid marks it terminated in this node's reachability at once
/// (Akka.Cluster's answer to a quarantine), which the gossip spreads. Only for an incarnation whose process is known to
/// be gone (the <c>--replaces</c> contract): a quarantined uid can never talk to this cluster again.
/// </summary>
public static class DeadIncarnation
{
    public static void Quarantine(ActorSystem system, Member member)
    {
        if (system is ExtendedActorSystem { Provider: IRemoteActorRefProvider remote })
            remote.Quarantine(member.Address, member.UniqueAddress.Uid);
    }
}

/// <summary>
/// On every member (<c>/user/predecessor-watch</c>): downs the crashed incarnation a restarting node names
/// (<see cref="DownPredecessor"/>) and tells it once that address is no member any more. Says nothing while this node is
/// not Up itself: it could not tell.
/// </summary>
public sealed class PredecessorWatch : ReceiveActor
{
    public const string Name = "predecessor-watch";

    public PredecessorWatch()
    {
        var cluster = Cluster.Get(Context.System);
        var log = Context.GetLogger();
        // The replacement asks every 250 ms, and a second ask can come before the member's status says Down: once is enough.
        var downed = new HashSet<UniqueAddress>();
        Receive<DownPredecessor>(ask =>
        {
            if (cluster.SelfMember.Status != MemberStatus.Up) return;
            var address = Address.Parse(ask.Address);
            var member = cluster.State.Members.FirstOrDefault(m => m.Address.Equals(address));
            if (member is null)
            {
                Sender.Tell(new PredecessorGone(ask.Address));
                return;
            }
            if (member.Status != MemberStatus.Down && downed.Add(member.UniqueAddress))
            {
                log.Warning("Downing {0} ({1}) for {2}, the node that replaces that crashed incarnation", address, member.Status, Sender.Path.Address);
                cluster.Down(address);
            }
            // Again on each ask while it stays: a quarantine that met a connection half made takes no effect (Akka.Remote).
            DeadIncarnation.Quarantine(Context.System, member);
        });
    }

    public static Props Props() => Akka.Actor.Props.Create(() => new PredecessorWatch());
}
