using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using LiveMigration.Coordinator.Migration;

namespace LiveMigration.Coordinator.Hosts;

/// <summary>
/// One per Coordinator node: watches cluster membership for hosts that join and tells the sagas of this node that
/// asked, so that only the steps of the host that came back go out again at once. It replaces a cluster subscription
/// per saga (each a snapshot of the membership built and sent by Akka's publisher, per saga, at every start).
/// </summary>
public sealed class HostRejoinWatcher : ReceiveActor, IWithTimers
{
    private sealed record Settled(string Address, bool SpmCapable);

    /// <summary>The new host's HSM registration reaches this node's pubsub by gossip: wait a moment before the steps go out.</summary>
    public static readonly TimeSpan SettleTime = TimeSpan.FromSeconds(2);

    private readonly HashSet<IActorRef> _sagas = [];
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public ITimerScheduler Timers { get; set; } = null!;

    public HostRejoinWatcher(HostDirectory directory, TimeSpan settleTime)
    {
        Receive<WatchHostRejoins>(w =>
        {
            // watched too: a saga that stops without saying so (a failing PostStop) is not told forever
            if (_sagas.Add(w.Saga)) Context.Watch(w.Saga);
        });
        Receive<UnwatchHostRejoins>(w =>
        {
            if (_sagas.Remove(w.Saga)) Context.Unwatch(w.Saga);
        });
        Receive<Terminated>(t => _sagas.Remove(t.ActorRef));
        Receive<ClusterEvent.MemberUp>(up =>
        {
            if (up.Member.HasRole("host") || up.Member.HasRole("spm"))
                Timers.StartSingleTimer($"settle-{up.Member.UniqueAddress}", new Settled(up.Member.Address.ToString(), up.Member.HasRole("spm")), settleTime);
        });
        Receive<Settled>(s =>
        {
            var address = s.Address;
            var joined = new HostRejoined(address, directory.HostAt(address), s.SpmCapable);
            _log.Info("Host {Host} at {Address} joined; telling {Sagas} migration(s) on this node", joined.HostId ?? "(not reported yet)", address, _sagas.Count);
            foreach (var saga in _sagas) saga.Tell(joined);
        });
        Receive<ClusterEvent.CurrentClusterState>(_ => { });
    }

    public static Props Props(HostDirectory directory, TimeSpan? settleTime = null)
    {
        var settle = settleTime ?? SettleTime;
        return Akka.Actor.Props.Create(() => new HostRejoinWatcher(directory, settle));
    }

    protected override void PreStart() =>
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.MemberUp));

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);
}
