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
/// <param name="Vm">The one VM the command changed; null when it may have changed any (a domain attached, VMs adopted).</param>
public sealed record HostInventoryChanged(string Why, VmId? Vm = null);

/// <summary>
/// Tells the Coordinator's inventory (through its singleton proxy) what this host sees: its VMs with the chains their drives run on,
/// and the storage domains it has attached (the inventory merges the hosts' domain reports). It reports when it starts, when a step
/// or a hypervisor event changed something, when a coordinator joins, and when a storage domain became unreachable or
/// reachable again (looked at every 5 s: an unmount sends no event) — no periodic report otherwise; a report is re-sent with
/// a bounded backoff until the inventory acknowledges it (<see cref="ReportAcknowledged"/>), so a report is delivered, not only sent.
/// Its VMs go as a chain of parts (<see cref="HostStatusReport"/>): the whole view first, in parts small enough for a remote
/// message, then only what changed since the part before; every part not acknowledged is sent again, in order, and a
/// resync from the inventory begins a new chain with the whole view.
/// A report describes again only the VMs a change named (a step's image, a hypervisor event's VM, a command's VM) and those
/// whose drives the hypervisor now shows on other files; the others keep their last report. Describing every VM after
/// every step made a host with thousands of VMs spend its cores on reports.
/// </summary>
public sealed class HostReporter : ReceiveActor, IWithTimers
{
    private sealed record ReportNow(string Why, VmId? Vm = null);
    private sealed record Reports(string Address, IReadOnlyList<KeyedVmReport> Vms, DomainStatusReport Domains, DateTimeOffset At,
        IReadOnlyDictionary<DomainId, bool> Reachable);
    private sealed record Resend;
    private sealed record PaceDue;
    private sealed record Adopted;

    /// <summary>First wait for a receipt before sending again; doubled after each unanswered send up to <see cref="MaxResendDelay"/>.</summary>
    public static readonly TimeSpan FirstResendDelay = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxResendDelay = TimeSpan.FromSeconds(8);
    private const string ResendTimer = "resend";
    private const string PaceTimer = "pace";
    private sealed record ReachabilityDue;
    private sealed record FiguresDue;
    private const string FiguresTimer = "figures";
    /// <summary>
    /// How often a host reports though nothing happened: a guest's writes, and a deleted image's files unlinked after the
    /// delete answered, move a disk's allocation and a domain's used bytes without an event, and reports otherwise follow
    /// events (a domain's figures stayed those of the last report for as long as nothing happened). Only figures move then,
    /// which the inventory applies without journaling them.
    /// </summary>
    public static readonly TimeSpan DefaultFiguresInterval = TimeSpan.FromSeconds(30);
    private readonly TimeSpan _figuresInterval;
    private sealed record ReachabilitySeen(IReadOnlyList<(DomainId Id, bool Reachable)> Domains);
    private bool _looking;
    private const string ReachabilityTimer = "reachability";
    /// <summary>
    /// How often a host looks whether each storage domain is reachable (cheap: a file domain's metadata found or not).
    /// An unmount or a remount sends no event, and the Coordinator admits moves only to domains reported active.
    /// </summary>
    public static readonly TimeSpan ReachabilityInterval = TimeSpan.FromSeconds(5);
    /// <summary>The longest pause between two reports that pacing may make (see <see cref="Done"/>).</summary>
    public static readonly TimeSpan MaxPace = TimeSpan.FromSeconds(1);
    /// <summary>
    /// How long a VM's report may be kept while no change named it: what its drives allocate grows with the guest's writes,
    /// and the Coordinator sizes a move's destination by it. The next report after that describes the VM again.
    /// </summary>
    public static readonly TimeSpan MaxReportReuse = TimeSpan.FromSeconds(30);
    /// <summary>
    /// How old a domain's used bytes in a report may be: a file domain counts them by walking every file, and a host reports
    /// at each change. A change the domain makes itself is counted at once; a guest's writes, another host's changes and a
    /// deleted image's files unlinked later show in the first report made once the count is older than this (reports
    /// follow changes: with none, the figures stay those of the last report, as before the count was kept).
    /// </summary>
    public static readonly TimeSpan DomainUsedMaxAge = TimeSpan.FromSeconds(10);

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
    // whether the chain sent so far began with the whole view: not when the reporter started or the inventory asked for
    // a resync; once it did, the inventory has the VMs as _described says when it took every part sent
    private bool _wholeSent;
    private long _epoch;
    private long _nextSeq;
    private DateTimeOffset _lastAt;
    // the newest domain report not yet acknowledged: re-sent until it is (a newer report replaces an older one)
    private DomainStatusReport? _unacknowledgedDomains;
    /// <summary>Each domain's last figures while it was reachable: its name stays known while it is not.</summary>
    private readonly Dictionary<DomainId, DomainReport> _lastDomains = [];
    /// <summary>Whether each domain was reachable when the last report was built (its result sets it, on the actor).</summary>
    private readonly Dictionary<DomainId, bool> _reachableWhenReported = [];
    private TimeSpan _resendDelay = FirstResendDelay;
    // the last report of each VM with the key of what it was made from, and which VM each drive's image belongs to
    private Dictionary<VmId, KeyedVmReport> _described = new();
    private Dictionary<ImageId, VmId> _imageOwners = new();
    // what the next report must describe again: every VM, or the VMs a change named since the last build started
    private bool _describeAll = true;
    private HashSet<VmId> _stale = new();
    // when the running build began, and the earliest time the next may begin
    private long _buildStartedAt;
    private DateTime _nextBuildAt = DateTime.MinValue;

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>
    /// Ends when the HSM has adopted the VMs still running from before this process (null: nothing to wait for). Until
    /// then the hypervisor does not list them, and a report would show each one of the catalog stopped: a Coordinator
    /// fails a pre-copy whose VM is reported stopped, so nothing is reported before it.
    /// </summary>
    private Task? _adopted;
    /// <summary>How long the first report waits for the adoption at most (an HSM that never ends it must not silence the host).</summary>
    public static readonly TimeSpan AdoptionWait = TimeSpan.FromSeconds(90);

    public HostReporter(string hostId, bool spmCapable, IHypervisor hypervisor, StoragePool pool, IActorRef inventory, VmCatalog? catalog = null,
        Task? adopted = null, TimeSpan? figuresInterval = null)
    {
        _figuresInterval = figuresInterval ?? DefaultFiguresInterval;
        _adopted = adopted;
        _catalog = catalog;
        _hostId = hostId;
        _spmCapable = spmCapable;
        _hypervisor = hypervisor;
        _pool = pool;
        _inventory = inventory;

        Receive<ReportNow>(r => Start(r.Why, r.Vm));
        // VMs whose report is older than MaxReportReuse are described again; the domains always are
        Receive<FiguresDue>(_ => Start("figures refresh", describeAllIfNoVm: false));
        Receive<ReachabilityDue>(_ =>
        {
            // Off the actor: a hung hard mount blocks this look, not the reporter; one look at a time.
            if (_looking) return;
            _looking = true;
            var domains = _pool.Domains.ToList();
            // a failed look is no news (not the builds' Status.Failure)
            Task.Run(() => new ReachabilitySeen(domains.Select(d => (d.Id, d.Reachable)).ToList()))
                .PipeTo(Self, failure: _ => new ReachabilitySeen([]));
        });
        Receive<ReachabilitySeen>(seen =>
        {
            _looking = false;
            foreach (var (id, reachable) in seen.Domains)
                if (_reachableWhenReported.TryGetValue(id, out var was) && was != reachable)
                {
                    Start($"storage domain {id} is {(reachable ? "reachable again" : "not reachable")}", describeAllIfNoVm: false);
                    return;
                }
        });
        Receive<Adopted>(_ =>
        {
            if (_adopted is { IsCompleted: false })
                _log.Warning("host {HostId}: the running VMs were not adopted within {Seconds} s; reporting anyway", _hostId, AdoptionWait.TotalSeconds);
            _adopted = null;
            Start("the running VMs are adopted");
        });
        // a step changed its image's chain or allocation (its VM's report) and the domains' usage (always described);
        // an image no VM here has (an SPM step for another host's VM) changes only the domains
        Receive<HostStateChanged>(c => Start($"step {c.Operation} finished",
            _imageOwners.TryGetValue(c.Operation.Image, out var owner) ? owner : null, describeAllIfNoVm: false));
        Receive<HostInventoryChanged>(c => Start(c.Why, c.Vm, describeAllIfNoVm: c.Vm is null));
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
            _described = r.Vms.ToDictionary(k => k.Report.Id);
            _imageOwners = new Dictionary<ImageId, VmId>();
            foreach (var vm in r.Vms)
                foreach (var drive in vm.Report.Drives) _imageOwners[drive.Image] = vm.Report.Id;
            _unacknowledgedParts.AddRange(parts);
            _unacknowledgedDomains = r.Domains with { At = at };
            foreach (var (domain, reachable) in r.Reachable) _reachableWhenReported[domain] = reachable;
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
                    _wholeSent = false;
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
        Receive<PaceDue>(_ =>
        {
            if (!_again || _reporting) return;
            _again = false;
            Start("changes while reports were paced", describeAllIfNoVm: false);
        });
        Receive<Status.Failure>(f =>
        {
            _log.Warning("host {HostId} could not build its report: {Error}", _hostId, f.Cause.Message);
            // the VMs this build was to describe again are not known any more: the next one describes all
            _describeAll = true;
            Done();
        });
        Receive<ClusterEvent.IMemberEvent>(_ => { });
    }

    /// <param name="inventory">The inventory singleton's proxy: it buffers reports until the singleton is found,
    /// so a report made while the cluster is still forming is not lost (a pubsub publish would be).</param>
    /// <param name="catalog">The VMs the host keeps while they are stopped; without it only running VMs are reported.</param>
    /// <param name="figuresInterval">How often it reports though nothing happened (<see cref="DefaultFiguresInterval"/>).</param>
    public static Props Props(string hostId, bool spmCapable, IHypervisor hypervisor, StoragePool pool, IActorRef inventory, VmCatalog? catalog = null,
        Task? adopted = null, TimeSpan? figuresInterval = null) =>
        Akka.Actor.Props.Create(() => new HostReporter(hostId, spmCapable, hypervisor, pool, inventory, catalog, adopted, figuresInterval));

    protected override void PreStart()
    {
        var self = Self;
        _onEvent = e => self.Tell(new ReportNow(e.GetType().Name, e.Vm));
        _hypervisor.EventRaised += _onEvent;
        Context.System.EventStream.Subscribe(Self, typeof(HostStateChanged));
        Timers.StartPeriodicTimer(ReachabilityTimer, new ReachabilityDue(), ReachabilityInterval);
        Timers.StartPeriodicTimer(FiguresTimer, new FiguresDue(), _figuresInterval);
        Context.System.EventStream.Subscribe(Self, typeof(HostInventoryChanged));
        Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberUp));
        if (_adopted is { IsCompleted: false } adoption)
            Task.WhenAny(adoption, Task.Delay(AdoptionWait)).ContinueWith(_ => new Adopted(), TaskScheduler.Default).PipeTo(Self);
        else
            Self.Tell(new ReportNow("host started"));
    }

    protected override void PostStop()
    {
        if (_onEvent is not null) _hypervisor.EventRaised -= _onEvent;
        Context.System.EventStream.Unsubscribe(Self);
        Cluster.Get(Context.System).Unsubscribe(Self);
    }

    /// <param name="vm">The VM the change concerns; its report is made again.</param>
    /// <param name="describeAllIfNoVm">Without a VM, whether the change may concern any VM (describe them all) or none.</param>
    private void Start(string why, VmId? vm = null, bool describeAllIfNoVm = true)
    {
        if (vm is { } changed) _stale.Add(changed);
        else if (describeAllIfNoVm) _describeAll = true;
        // Not before the adoption ended (the Adopted message then reports all that waited).
        if (_adopted is { IsCompleted: false }) return;
        // One report at a time; changes during a report make one more report after it.
        if (_reporting)
        {
            _again = true;
            return;
        }
        var wait = _nextBuildAt - DateTime.UtcNow;
        if (wait > TimeSpan.Zero)
        {
            _again = true;
            if (!Timers.IsTimerActive(PaceTimer)) Timers.StartSingleTimer(PaceTimer, new PaceDue(), wait);
            return;
        }
        _reporting = true;
        _buildStartedAt = System.Diagnostics.Stopwatch.GetTimestamp();
        _log.Debug("host {HostId} reports: {Why}", _hostId, why);
        var address = Cluster.Get(Context.System).SelfAddress.ToString();
        // _described is replaced only when this build's result arrives, so the build may read it; the stale set is its own
        var described = _describeAll ? null : _described;
        var stale = _stale;
        _describeAll = false;
        _stale = new HashSet<VmId>();
        BuildAsync(address, described, stale).PipeTo(Self);
    }

    /// <summary>Sends what the inventory has not acknowledged, and sends it again after the current delay unless a receipt comes first.</summary>
    private void SendUnacknowledged()
    {
        foreach (var part in _unacknowledgedParts) _inventory.Tell(part);
        if (_unacknowledgedDomains is { } domains) _inventory.Tell(domains);
        Timers.StartSingleTimer(ResendTimer, new Resend(), _resendDelay);
    }

    /// <summary>
    /// A report is made; the next one waits at least as long as this one took (at most <see cref="MaxPace"/>), so a host
    /// spends at most about half its time on reports however many VMs it has and however fast steps end: the changes
    /// meanwhile go together into the next report. A host of a few VMs reports in a millisecond and hardly waits.
    /// </summary>
    private void Done()
    {
        _reporting = false;
        var took = System.Diagnostics.Stopwatch.GetElapsedTime(_buildStartedAt);
        _nextBuildAt = DateTime.UtcNow + (took < MaxPace ? took : MaxPace);
        if (_again)
        {
            _again = false;
            Start("changes during the last report", describeAllIfNoVm: false);
        }
    }

    /// <param name="described">The last reports to keep for VMs not <paramref name="stale"/> whose key is unchanged; null: describe all.</param>
    private async Task<Reports> BuildAsync(string address, IReadOnlyDictionary<VmId, KeyedVmReport>? described, HashSet<VmId> stale)
    {
        var now = DateTimeOffset.UtcNow;
        var vms = await VmReports.ListKeyedAsync(_hypervisor, _pool, _catalog, (id, key) =>
            described is not null && !stale.Contains(id) && described.TryGetValue(id, out var last) && last.Key == key
            && now - last.DescribedAt < MaxReportReuse ? last : null);
        var domains = new List<DomainReport>();
        var reachable = new Dictionary<DomainId, bool>();
        foreach (var domain in _pool.Domains)
        {
            DomainReport report;
            try
            {
                var info = await domain.DescribeAsync(DomainUsedMaxAge);
                report = new DomainReport(info.Id, info.Name, info.Kind, info.CapacityBytes, info.UsedBytes, info.AvailableBytes, Active: true,
                    CountedAt: info.UsedCountedAt);
                _lastDomains[domain.Id] = report;
                reachable[domain.Id] = true;
            }
            catch (OperationFailedException)
            {
                // recorded as reported: a domain whose metadata is still there but whose description failed (an I/O error)
                // is looked at again by the reachability watch, which then sees it differ and reports it again
                reachable[domain.Id] = false;
                // Not reachable from here (unmounted, I/O error): said so, and no migration is admitted to it; the other
                // domains and the VMs are still reported.
                report = _lastDomains.TryGetValue(domain.Id, out var last)
                    ? last with { AvailableBytes = 0, Active = false }
                    : new DomainReport(domain.Id, domain.Name, domain.Kind, 0, 0, 0, Active: false);
            }
            domains.Add(report);
        }
        return new Reports(address, vms, new DomainStatusReport(domains.ToValueList(), now, _hostId), now, reachable);
    }

    /// <summary>
    /// The next parts of the chain: the whole view (a new chain) when the inventory's view is not known, else what changed
    /// since the reports <see cref="_described"/> still holds (at least one part, so the inventory hears from the host even
    /// when nothing changed). A kept report is the same object as before, so comparing it costs nothing.
    /// </summary>
    private List<HostStatusReport> PartsOf(string address, IReadOnlyList<KeyedVmReport> keyed, DateTimeOffset at)
    {
        var parts = new List<HostStatusReport>();
        var vms = keyed.Select(k => k.Report).ToList();
        if (!_wholeSent)
        {
            _wholeSent = true;
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
            var changed = vms.Where(v => !_described.TryGetValue(v.Id, out var before) || !before.Report.Equals(v)).ToList();
            var now = vms.Select(v => v.Id).ToHashSet();
            var gone = _described.Keys.Where(id => !now.Contains(id)).ToList();
            foreach (var chunk in HostReportParts.Split(changed, gone))
                parts.Add(new HostStatusReport(_hostId, address, _spmCapable, chunk.Vms, at, _epoch, _nextSeq++,
                    Whole: false, WholeEnds: false, Gone: chunk.Gone));
        }
        return parts;
    }
}
