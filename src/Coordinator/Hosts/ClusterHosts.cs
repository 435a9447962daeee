using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Cluster.Hosting;
using Akka.Cluster.Tools.PublishSubscribe;
using Akka.Event;
using Akka.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Hosts;

/// <summary>Which host runs which VM, as the inventory last journaled the hosts' reports (on this coordinator).</summary>
public sealed class HostDirectory
{
    private readonly ConcurrentDictionary<VmId, string> _hostOfVm = new();
    private readonly ConcurrentDictionary<string, string> _hostAtAddress = new();

    public string? HostOf(VmId vm) => _hostOfVm.TryGetValue(vm, out var host) ? host : null;

    /// <summary>
    /// The VM's host, from this directory or else from the inventory: the directory learns only from changes, so a VM
    /// whose reports changed nothing since this Coordinator started is not in it. Null when the inventory does not know
    /// the VM either; fails (the ask's timeout) when it does not answer, which is not an answer that the VM has no host.
    /// </summary>
    public async Task<string?> LocateAsync(VmId vm, IActorRef inventory, TimeSpan timeout) =>
        HostOf(vm) ?? (await inventory.Ask<VmLocation>(new LocateVm(vm), timeout)).HostId;

    /// <summary>The host that last reported from this cluster address (as <c>Address.ToString()</c>); null if none did.</summary>
    public string? HostAt(string address) => _hostAtAddress.TryGetValue(address, out var host) ? host : null;

    /// <summary>A host reports from one address: any other it reported from before is no longer its.</summary>
    private void NowAt(string hostId, string address)
    {
        if (_hostAtAddress.TryGetValue(address, out var known) && known == hostId) return;
        foreach (var (old, host) in _hostAtAddress)
            if (host == hostId && old != address)
                _hostAtAddress.TryRemove(new KeyValuePair<string, string>(old, host));
        _hostAtAddress[address] = hostId;
    }

    /// <summary>A host's whole view: its VMs are these, none other.</summary>
    public void Apply(HostReported whole)
    {
        NowAt(whole.HostId, whole.Address);
        var now = whole.Vms.Select(v => v.Id).ToHashSet();
        foreach (var (vm, host) in _hostOfVm)
            if (host == whole.HostId && !now.Contains(vm))
                _hostOfVm.TryRemove(new KeyValuePair<VmId, string>(vm, host));
        foreach (var vm in whole.Vms)
            _hostOfVm[vm.Id] = whole.HostId;
    }

    /// <summary>A host forgotten for good: none of its VMs and none of its addresses lead to it any more.</summary>
    public void Apply(HostForgotten forgotten)
    {
        foreach (var (vm, host) in _hostOfVm)
            if (host == forgotten.HostId) _hostOfVm.TryRemove(new KeyValuePair<VmId, string>(vm, host));
        foreach (var (address, host) in _hostAtAddress)
            if (host == forgotten.HostId) _hostAtAddress.TryRemove(new KeyValuePair<string, string>(address, host));
    }

    /// <summary>A change of a host's VMs: these are its now, those gone are no longer its.</summary>
    public void Apply(HostVmsChanged change)
    {
        NowAt(change.HostId, change.Address);
        foreach (var vm in change.Gone)
            _hostOfVm.TryRemove(new KeyValuePair<VmId, string>(vm, change.HostId));
        foreach (var vm in change.Upserted)
            _hostOfVm[vm.Id] = change.HostId;
    }
}

/// <summary>Keeps a <see cref="HostDirectory"/> up to date from the changes the inventory publishes on its topic.</summary>
public sealed class HostDirectoryListener : ReceiveActor
{
    public HostDirectoryListener(HostDirectory directory)
    {
        Receive<HostReported>(directory.Apply);
        Receive<HostVmsChanged>(directory.Apply);
        Receive<HostForgotten>(directory.Apply);
        Receive<SubscribeAck>(_ => { });
    }

    public static Props Props(HostDirectory directory) => Akka.Actor.Props.Create(() => new HostDirectoryListener(directory));

    protected override void PreStart() =>
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Subscribe(InventoryTopics.Reports, Self));
}

/// <summary>
/// The sagas' way to a VM's HSM: it forwards each step to <c>/user/hsm-{hostId}</c> of the host that runs
/// the VM through DistributedPubSub, keeping the saga as the sender so the host answers it directly.
/// </summary>
public sealed class HsmGateway : ReceiveActor
{
    private sealed record Located(ExecuteStep Step, IActorRef ReplyTo, string? Host);

    private readonly Dictionary<MigrationId, string> _hostOfMigration = new();
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public HsmGateway(HostDirectory directory, IActorRef inventory)
    {
        var mediator = DistributedPubSub.Get(Context.System).Mediator;
        Receive<ExecuteStep>(step =>
        {
            if (directory.HostOf(step.Vm) is { } host)
            {
                Forward(step, Sender, host);
                return;
            }
            var replyTo = Sender;
            directory.LocateAsync(step.Vm, inventory, TimeSpan.FromSeconds(10))
                .PipeTo(Self, success: host => new Located(step, replyTo, host), failure: _ => new Located(step, replyTo, null));
        });
        Receive<Located>(located =>
        {
            if (located.Host is { } host)
            {
                Forward(located.Step, located.ReplyTo, host);
                return;
            }
            // Unknown until the host reports it; a transient answer makes the saga try again.
            located.ReplyTo.Tell(new OperationFailed(located.Step.Operation, ErrorCodes.VmNotFound,
                $"no host has reported VM {located.Step.Vm} yet", Transient: true));
        });
        Receive<SetStepSpeed>(speed =>
        {
            if (_hostOfMigration.TryGetValue(speed.Operation.Migration, out var host))
                mediator.Tell(new Send(HsmPath(host), speed), Sender);
            else
                _log.Warning("no host known for {Operation}; speed change dropped", speed.Operation);
        });
    }

    private void Forward(ExecuteStep step, IActorRef replyTo, string host)
    {
        _hostOfMigration[step.Operation.Migration] = host;
        DistributedPubSub.Get(Context.System).Mediator.Tell(new Send(HsmPath(host), step), replyTo);
    }

    public static string HsmPath(string hostId) => $"/user/hsm-{hostId}";

    public static Props Props(HostDirectory directory, IActorRef inventory) =>
        Akka.Actor.Props.Create(() => new HsmGateway(directory, inventory));
}

public sealed record ClusterMigrationHosts(IActorRef Spm, IActorRef Gateway, HostDirectory Directory, IActorRef Rejoins, IActorRef Inventory) : IMigrationHosts
{
    public IActorRef? RejoinWatcher => Rejoins;
    public IActorRef? HsmFor(VmId vm) => Gateway;
    public string? HostOf(VmId vm) => Directory.HostOf(vm);

    public Task<string?> LocateAsync(VmId vm) => Directory.LocateAsync(vm, Inventory, TimeSpan.FromSeconds(5));
}

/// <summary>Registry keys.</summary>
public sealed class SpmProxy;
public sealed class HsmGatewayKey;
public sealed class HostRejoinWatcherKey;

public static class ClusterHostsHosting
{
    /// <summary>The SPM singleton proxy, the host directory and the HSM gateway, for the migration sagas.</summary>
    public static AkkaConfigurationBuilder WithClusterHosts(this AkkaConfigurationBuilder builder, HostDirectory directory,
        Func<IActorRegistry, IActorRef> inventory) =>
        builder
            .WithSingletonProxy<SpmProxy>("spm", new ClusterSingletonOptions { Role = "spm" })
            .WithActors((system, registry) =>
            {
                system.ActorOf(HostDirectoryListener.Props(directory), "host-directory");
                registry.Register<HsmGatewayKey>(system.ActorOf(HsmGateway.Props(directory, inventory(registry)), "hsm-gateway"));
                registry.Register<HostRejoinWatcherKey>(system.ActorOf(HostRejoinWatcher.Props(directory), "host-rejoins"));
            });

    public static IMigrationHosts Resolve(IActorRegistry registry, HostDirectory directory, IActorRef inventory) =>
        new ClusterMigrationHosts(registry.Get<SpmProxy>(), registry.Get<HsmGatewayKey>(), directory, registry.Get<HostRejoinWatcherKey>(), inventory);
}
