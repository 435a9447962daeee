using Akka.Actor;
using Akka.Cluster;
using Akka.Event;

namespace LiveMigration.Shared.Hosting;

/// <summary>
/// Downs the member this process replaces (<c>--replaces ADDRESS</c>): a crashed incarnation of the same node that came
/// back on a fresh port. Its peers still count it as a member (unreachable) until someone downs it, and while it stays
/// the leader can move nobody to Up and its singletons stay with it. Whoever restarts a node passes its old address only
/// after making sure its process is gone (<c>lsm local up</c> checks the pid), so downing it takes nothing live away.
/// Acts as soon as this node is in the membership, and stops once the predecessor is removed.
/// </summary>
/// <remarks>
/// Why a fresh port rather than the old one: a process that comes back on its old address while its peers still redial
/// the old incarnation can meet one of those dials in flight; Akka.Remote then drops the dial's writer but not its
/// connection, and the new process reads a connection nobody writes on (README: the fault matrix found it).
/// </remarks>
public sealed class PredecessorDowning : ReceiveActor
{
    private readonly Cluster _cluster = Cluster.Get(Context.System);
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly Address _predecessor;
    private bool _downed;

    public PredecessorDowning(Address predecessor)
    {
        _predecessor = predecessor;
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

    public static Props Props(Address predecessor) => Akka.Actor.Props.Create(() => new PredecessorDowning(predecessor));

    protected override void PreStart() =>
        _cluster.Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.IMemberEvent));

    protected override void PostStop() => _cluster.Unsubscribe(Self);

    /// <summary>Member events reach this actor only once this node got the cluster's gossip, i.e. is a member itself: a Down then takes effect.</summary>
    private void Consider(Member member)
    {
        if (_downed || !member.Address.Equals(_predecessor) || member.Status is MemberStatus.Down or MemberStatus.Removed) return;
        _log.Warning("Downing {0} ({1}), the crashed incarnation this node replaces (--replaces), so the cluster can move on without it",
            member.Address, member.Status);
        _cluster.Down(member.Address);
        _downed = true;
    }
}
