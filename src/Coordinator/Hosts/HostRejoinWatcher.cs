using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Hosts;

/// <summary>
/// One per Coordinator node: watches cluster membership for hosts that join and tells the sagas of this node that
/// asked, so that only the steps of the host that came back go out again at once. It replaces a cluster subscription
/// per saga (each a snapshot of the membership built and sent by Akka's publisher, per saga, at every start).
/// It also reads the hosts' reports the inventory publishes and tells a saga when its VM is reported stopped
/// (<see cref="ReportVmStopped"/>): once when the VM stops, and at once to a saga that asks about a VM known stopped
/// (a recovered saga whose VM stopped while the Coordinator was down). When the admission limits start anew (their
/// singleton moved to another Coordinator, with nothing counted) it tells its sagas to say what they hold.
/// </summary>
public sealed class HostRejoinWatcher : ReceiveActor, IWithTimers
{
    private sealed record Settled(string Address, bool SpmCapable);

    /// <summary>The new host's HSM registration reaches this node's pubsub by gossip: wait a moment before the steps go out.</summary>
    public static readonly TimeSpan SettleTime = TimeSpan.FromSeconds(2);

    private readonly HashSet<IActorRef> _sagas = [];
    /// <summary>The VMs the newest reports show not running, with their host.</summary>
    private readonly Dictionary<VmId, string> _stopped = new();
    private readonly Dictionary<VmId, Dictionary<IActorRef, MigrationId>> _vmWatchers = new();
    private readonly Dictionary<IActorRef, VmId> _vmOfSaga = new();
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public ITimerScheduler Timers { get; set; } = null!;

    public HostRejoinWatcher(HostDirectory directory, TimeSpan settleTime)
    {
        Receive<WatchHostRejoins>(w =>
        {
            // watched too: a saga that stops without saying so (a failing PostStop) is not told forever
            if (_sagas.Add(w.Saga)) Context.Watch(w.Saga);
        });
        Receive<WatchVmStops>(w =>
        {
            if (_sagas.Add(w.Saga)) Context.Watch(w.Saga);
            ForgetVmOf(w.Saga);
            _vmOfSaga[w.Saga] = w.Vm;
            if (!_vmWatchers.TryGetValue(w.Vm, out var watchers)) _vmWatchers[w.Vm] = watchers = new();
            watchers[w.Saga] = w.Migration;
            if (_stopped.TryGetValue(w.Vm, out var host)) w.Saga.Tell(new ReportVmStopped(w.Migration, w.Vm, host));
        });
        Receive<UnwatchHostRejoins>(w =>
        {
            if (_sagas.Remove(w.Saga)) Context.Unwatch(w.Saga);
            ForgetVmOf(w.Saga);
        });
        Receive<Terminated>(t =>
        {
            _sagas.Remove(t.ActorRef);
            ForgetVmOf(t.ActorRef);
        });
        Receive<HostReported>(whole =>
        {
            var reported = whole.Vms.Select(v => v.Id).ToHashSet();
            foreach (var (vm, host) in _stopped.ToList())
                if (host == whole.HostId && !reported.Contains(vm)) _stopped.Remove(vm);
            foreach (var vm in whole.Vms) Saw(vm, whole.HostId);
        });
        Receive<HostVmsChanged>(change =>
        {
            foreach (var vm in change.Gone) _stopped.Remove(vm);
            foreach (var vm in change.Upserted) Saw(vm, change.HostId);
        });
        Receive<HostForgotten>(forgotten =>
        {
            foreach (var (vm, host) in _stopped.ToList())
                if (host == forgotten.HostId) _stopped.Remove(vm);
        });
        Receive<AdmissionRestarted>(_ =>
        {
            _log.Info("The admission limits started anew at {Limits}; telling {Sagas} migration(s) on this node to say what they hold", Sender.Path, _sagas.Count);
            // the publisher is the new singleton itself (pub/sub keeps the sender)
            foreach (var saga in _sagas) saga.Tell(new AnnounceAdmission(Sender));
        });
        Receive<SubscribeAck>(_ => { });
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

    /// <summary>A VM as its host reports it now: running, or stopped (told to its sagas when it was not known stopped).</summary>
    private void Saw(VmReport vm, string host)
    {
        if (vm.Running)
        {
            _stopped.Remove(vm.Id);
            return;
        }
        if (!_stopped.TryAdd(vm.Id, host)) return;
        if (!_vmWatchers.TryGetValue(vm.Id, out var watchers)) return;
        _log.Info("VM {Vm} reported stopped by host {Host}; telling its {Count} migration(s) on this node", vm.Id, host, watchers.Count);
        foreach (var (saga, migration) in watchers) saga.Tell(new ReportVmStopped(migration, vm.Id, host));
    }

    private void ForgetVmOf(IActorRef saga)
    {
        if (!_vmOfSaga.Remove(saga, out var vm) || !_vmWatchers.TryGetValue(vm, out var watchers)) return;
        watchers.Remove(saga);
        if (watchers.Count == 0) _vmWatchers.Remove(vm);
    }

    public static Props Props(HostDirectory directory, TimeSpan? settleTime = null)
    {
        var settle = settleTime ?? SettleTime;
        return Akka.Actor.Props.Create(() => new HostRejoinWatcher(directory, settle));
    }

    protected override void PreStart()
    {
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsSnapshot, typeof(ClusterEvent.MemberUp));
        var mediator = DistributedPubSub.Get(Context.System).Mediator;
        mediator.Tell(new Subscribe(InventoryTopics.Reports, Self));
        mediator.Tell(new Subscribe(AdmissionRestarted.Topic, Self));
    }

    protected override void PostStop() => Cluster.Get(Context.System).Unsubscribe(Self);
}
