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
/// </summary>
public sealed class HostReporter : ReceiveActor, IWithTimers
{
    private sealed record ReportNow(string Why);
    private sealed record Reports(HostStatusReport Host, DomainStatusReport Domains);
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
    // the newest reports not yet acknowledged by the inventory: re-sent until they are (a newer report replaces an older one)
    private HostStatusReport? _unacknowledgedHost;
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
            _unacknowledgedHost = r.Host;
            _unacknowledgedDomains = r.Domains;
            _resendDelay = FirstResendDelay;
            SendUnacknowledged();
            Done();
        });
        Receive<ReportAcknowledged>(ack =>
        {
            if (ack.Report == ReportAcknowledged.HostReport && _unacknowledgedHost?.At == ack.At) _unacknowledgedHost = null;
            if (ack.Report == ReportAcknowledged.DomainsReport && _unacknowledgedDomains?.At == ack.At) _unacknowledgedDomains = null;
            if (_unacknowledgedHost is null && _unacknowledgedDomains is null) Timers.Cancel(ResendTimer);
        });
        Receive<Resend>(_ =>
        {
            if (_unacknowledgedHost is null && _unacknowledgedDomains is null) return;
            // said once per report; while no Coordinator runs the re-sends go on quietly
            if (_resendDelay == FirstResendDelay)
                _log.Info("host {HostId}: the inventory has not acknowledged its report of {At} yet; sending it again until it does",
                    _hostId, (_unacknowledgedHost?.At ?? _unacknowledgedDomains!.At).ToString("O"));
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
        if (_unacknowledgedHost is { } host) _inventory.Tell(host);
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
        return new Reports(new HostStatusReport(_hostId, address, _spmCapable, vms.ToValueList(), now),
            new DomainStatusReport(domains.ToValueList(), now, _hostId));
    }
}
