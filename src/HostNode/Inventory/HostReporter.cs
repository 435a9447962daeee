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
/// and the storage domains (every host sees the shared domains). It reports when it starts, when a step
/// or a hypervisor event changed something, and when a coordinator joins — never from a timer.
/// </summary>
public sealed class HostReporter : ReceiveActor
{
    private sealed record ReportNow(string Why);
    private sealed record Reports(HostStatusReport Host, DomainStatusReport Domains);

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
            _inventory.Tell(r.Host);
            _inventory.Tell(r.Domains);
            Done();
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
            new DomainStatusReport(domains.ToValueList(), now));
    }
}
