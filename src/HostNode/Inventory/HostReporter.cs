using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Inventory;

/// <summary>Published on the local event stream by the SPM and HSM after a step changed storage or a drive's chain.</summary>
public sealed record HostStateChanged(OperationId Operation);

/// <summary>Published on the local event stream when an operator's command changed the host's VMs or domains.</summary>
public sealed record HostInventoryChanged(string Why);

/// <summary>
/// Tells the Coordinator's inventory (through its singleton proxy) what this host sees: its VMs with the chains their drives run on,
/// and the storage domains it has attached (the inventory merges the hosts' domain reports). It reports when it starts, when a step
/// or a hypervisor event changed something, and when a coordinator joins — never from a timer; a report is re-sent with
/// a bounded backoff until the inventory acknowledges it (<see cref="ReportAcknowledged"/>), so a report is delivered, not only sent.
/// Its VMs go as a chain of parts (<see cref="HostStatusReport"/>): the whole view first, in parts small enough for a remote
/// message, then only what changed since the part before; every part not acknowledged is sent again, in order, and a
/// resync from the inventory begins a new chain with the whole view.
/// </summary>
public sealed class HostReporter : ReceiveActor, IWithTimers
{
    private sealed record ReportNow(string Why);
    private sealed record Reports(string Address, IReadOnlyList<VmReport> Vms, DomainStatusReport Domains, DateTimeOffset At);
    private sealed record Resend;

    /// <summary>First wait for a receipt before sending again; doubled after each unanswered send up to <see cref="MaxResendDelay"/>.</summary>
    public static readonly TimeSpan FirstResendDelay = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxResendDelay = TimeSpan.FromSeconds(8);
    private const string ResendTimer = "resend";

    private readonly string _hostId;
    private readonly bool _spmCapable;
    private readonly IHypervisor _hypervisor;
    private readonly StoragePool _pool;
    private readonly VmCatalog? _catalog;
    private readonly ILoggingAdapter _log = Context.GetLogger();
    private readonly IActorRef _inventory;
    private Action<HypervisorEvent>? _onEvent;
    private bool _reporting;
    private bool _again;
    // the parts of the VM report chain the inventory has not acknowledged, in order: re-sent until it does
    private readonly List<HostStatusReport> _unacknowledgedParts = [];
    // the VMs as the inventory has them once it took every part sent: what the next part is the change from;
    // null until the whole view is sent (the reporter started, or the inventory asked for a resync)
    private Dictionary<VmId, VmReport>? _assumed;
    private long _epoch;
    private long _nextSeq;
    private DateTimeOffset _lastAt;
    // the newest domain report not yet acknowledged: re-sent until it is (a newer report replaces an older one)
    private DomainStatusReport? _unacknowledgedDomains;
    private TimeSpan _resendDelay = FirstResendDelay;

    public ITimerScheduler Timers { get; set; } = null!;

    public HostReporter(string hostId, bool spmCapable, IHypervisor hypervisor, StoragePool pool, IActorRef inventory, VmCatalog? catalog = null)
    {
        _catalog = catalog;
        _hostId = hostId;
        _spmCapable = spmCapable;
        _hypervisor = hypervisor;
        _pool = pool;
        _inventory = inventory;

        Receive<ReportNow>(r => Start(r.Why));
        Receive<HostStateChanged>(c => Start($"step {c.Operation} finished"));
        Receive<HostInventoryChanged>(c => Start(c.Why));
        Receive<ClusterEvent.MemberUp>(up =>
        {
            if (up.Member.HasRole("coordinator")) Start($"coordinator {up.Member.Address} joined");
        });
        Receive<Reports>(r =>
        {
            // every report later than the one before, even within a clock tick: the inventory orders whole views by time
            var at = r.At > _lastAt ? r.At : _lastAt.AddTicks(1);
            _lastAt = at;
            var parts = PartsOf(r.Address, r.Vms, at);
            _unacknowledgedParts.AddRange(parts);
            _unacknowledgedDomains = r.Domains with { At = at };
            _resendDelay = FirstResendDelay;
            // every part not acknowledged, in order: a lost earlier part would otherwise leave a gap until the re-send
            SendUnacknowledged();
            Done();
        });
        Receive<ReportAcknowledged>(ack =>
        {
            if (ack.Report == ReportAcknowledged.HostReport && ack.Epoch == _epoch)
            {
                if (ack.Resync)
                {
                    // the inventory does not know this chain (it recovered since): the whole view again, in a new chain
                    _log.Info("host {HostId}: the inventory asked for its whole view again", _hostId);
                    _unacknowledgedParts.Clear();
                    _assumed = null;
                    Start("the inventory asked for the whole view");
                }
                else
                    _unacknowledgedParts.RemoveAll(p => p.Seq <= ack.Seq);
            }
            if (ack.Report == ReportAcknowledged.DomainsReport && _unacknowledgedDomains?.At == ack.At) _unacknowledgedDomains = null;
            if (_unacknowledgedParts.Count == 0 && _unacknowledgedDomains is null) Timers.Cancel(ResendTimer);
        });
        Receive<Resend>(_ =>
        {
            if (_unacknowledgedParts.Count == 0 && _unacknowledgedDomains is null) return;
            // said once per report; while no Coordinator runs the re-sends go on quietly
            if (_resendDelay == FirstResendDelay)
                _log.Info("host {HostId}: the inventory has not acknowledged its report of {At} yet; sending it again until it does",
                    _hostId, (_unacknowledgedParts.FirstOrDefault()?.At ?? _unacknowledgedDomains!.At).ToString("O"));
            _resendDelay = TimeSpan.FromTicks(Math.Min(_resendDelay.Ticks * 2, MaxResendDelay.Ticks));
            SendUnacknowledged();
        });
        Receive<Status.Failure>(f =>
        {
            _log.Warning("host {HostId} could not build its report: {Error}", _hostId, f.Cause.Message);
            Done();
        });
        Receive<ClusterEvent.IMemberEvent>(_ => { });
    }

    /// <param name="inventory">The inventory singleton's proxy: it buffers reports until the singleton is found,
    /// so a report made while the cluster is still forming is not lost (a pubsub publish would be).</param>
    /// <param name="catalog">The VMs the host keeps while they are stopped; without it only running VMs are reported.</param>
    public static Props Props(string hostId, bool spmCapable, IHypervisor hypervisor, StoragePool pool, IActorRef inventory, VmCatalog? catalog = null) =>
        Akka.Actor.Props.Create(() => new HostReporter(hostId, spmCapable, hypervisor, pool, inventory, catalog));

    protected override void PreStart()
    {
        var self = Self;
        _onEvent = e => self.Tell(new ReportNow(e.GetType().Name));
        _hypervisor.EventRaised += _onEvent;
        Context.System.EventStream.Subscribe(Self, typeof(HostStateChanged));
        Context.System.EventStream.Subscribe(Self, typeof(HostInventoryChanged));
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberUp));
        Self.Tell(new ReportNow("host started"));
    }

    protected override void PostStop()
    {
        if (_onEvent is not null) _hypervisor.EventRaised -= _onEvent;
        Context.System.EventStream.Unsubscribe(Self);
        Cluster.Get(Context.System).Unsubscribe(Self);
    }

    private void Start(string why)
    {
        // One report at a time; changes during a report make one more report after it.
        if (_reporting)
        {
            _again = true;
            return;
        }
        _reporting = true;
        _log.Debug("host {HostId} reports: {Why}", _hostId, why);
        var address = Cluster.Get(Context.System).SelfAddress.ToString();
        BuildAsync(address).PipeTo(Self);
    }

    /// <summary>Sends what the inventory has not acknowledged, and sends it again after the current delay unless a receipt comes first.</summary>
    private void SendUnacknowledged()
    {
        foreach (var part in _unacknowledgedParts) _inventory.Tell(part);
        if (_unacknowledgedDomains is { } domains) _inventory.Tell(domains);
        Timers.StartSingleTimer(ResendTimer, new Resend(), _resendDelay);
    }

    private void Done()
    {
        _reporting = false;
        if (_again)
        {
            _again = false;
            Start("changes during the last report");
        }
    }

    private async Task<Reports> BuildAsync(string address)
    {
        var now = DateTimeOffset.UtcNow;
        var vms = await VmReports.ListAsync(_hypervisor, _pool, _catalog);
        var domains = new List<DomainReport>();
        foreach (var domain in _pool.Domains)
        {
            var info = await domain.DescribeAsync();
            domains.Add(new DomainReport(info.Id, info.Name, info.Kind, info.CapacityBytes, info.UsedBytes, info.AvailableBytes, Active: true));
        }
        return new Reports(address, vms, new DomainStatusReport(domains.ToValueList(), now, _hostId), now);
    }

    /// <summary>
    /// The next parts of the chain: the whole view (a new chain) when the inventory's view is not known, else what changed
    /// since the parts sent before (at least one part, so the inventory hears from the host even when nothing changed).
    /// </summary>
    private List<HostStatusReport> PartsOf(string address, IReadOnlyList<VmReport> vms, DateTimeOffset at)
    {
        var parts = new List<HostStatusReport>();
        if (_assumed is null)
        {
            _epoch = at.UtcTicks;
            _nextSeq = 0;
            _unacknowledgedParts.Clear();
            var chunks = HostReportParts.Split(vms, []);
            for (var i = 0; i < chunks.Count; i++)
                parts.Add(new HostStatusReport(_hostId, address, _spmCapable, chunks[i].Vms, at, _epoch, _nextSeq++,
                    Whole: true, WholeEnds: i == chunks.Count - 1));
        }
        else
        {
            var changed = vms.Where(v => !_assumed.TryGetValue(v.Id, out var before) || !before.Equals(v)).ToList();
            var now = vms.Select(v => v.Id).ToHashSet();
            var gone = _assumed.Keys.Where(id => !now.Contains(id)).ToList();
            foreach (var chunk in HostReportParts.Split(changed, gone))
                parts.Add(new HostStatusReport(_hostId, address, _spmCapable, chunk.Vms, at, _epoch, _nextSeq++,
                    Whole: false, WholeEnds: false, Gone: chunk.Gone));
        }
        _assumed = vms.ToDictionary(v => v.Id);
        return parts;
    }
}
