using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Sharding;
using Akka.Hosting;
using LiveMigration.Coordinator.Api;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.HostNode.Hosting;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Hosting;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>One ActorSystem of the in-process cluster, built by the same hosting extensions as the real processes.</summary>
public sealed class ClusterNodeHandle(string name, IHost host)
{
    public string Name { get; } = name;
    public IHost Host { get; } = host;
    public ActorSystem System { get; } = host.Services.GetRequiredService<ActorSystem>();
    public Address Address => Akka.Cluster.Cluster.Get(System).SelfAddress;
    public bool Stopped { get; set; }
}

/// <summary>A simulated hypervisor machine: its QEMUs (<see cref="SimHost"/>) outlive the HostNode that drives them.</summary>
public sealed class SimMachine(string hostId, SimHost qemus, StoragePool pool)
{
    public string HostId { get; } = hostId;
    public SimHost Qemus { get; } = qemus;
    public StoragePool Pool { get; } = pool;
    /// <summary>The hypervisor adapter of the HostNode now running on this machine.</summary>
    public SimHypervisor Hypervisor { get; set; } = null!;
    public ClusterNodeHandle? Node { get; set; }
}

/// <summary>A VM started on a sim machine with one disk: a 3-volume chain on domain A.</summary>
public sealed record SimVm(VmId Id, ImageId Image, VolumeId Base, VolumeId Middle, VolumeId Leaf);

/// <summary>
/// Several ActorSystems in this test process on 127.0.0.1 (ports chosen by the OS), wired exactly like the
/// Coordinator and HostNode processes, over sim adapters: two shared sim storage domains A and B and one
/// <see cref="SimHost"/> per host. Messages between nodes go through the protocol serializer for real here;
/// <c>serialize-messages</c> stays off because Akka's own local messages (DistributedData's ReadRepair,
/// the SQL journal's WriteFinished) have no serializer and are dropped under it, which stalls sharding.
/// The bindings of our messages are proven with it on in the actor and serializer tests.
/// </summary>
public sealed class ClusterBed : IAsyncDisposable
{
    public const long MiB = 1L << 20;
    public const long ChainCapacity = 64 * MiB;

    /// <summary>Fast cluster timings and only warnings in the logs.</summary>
    public const string TestHocon = ClusterNodeHosting.FastTestTimings + """

        akka.loglevel = WARNING
        akka.cluster.split-brain-resolver.stable-after = 3s
        """;

    private readonly ITestOutputHelper _output;
    private readonly List<ClusterNodeHandle> _nodes = [];
    private readonly Dictionary<string, SimMachine> _machines = new();
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private Address? _seed;

    public ClusterBed(ITestOutputHelper output, SimStorageOptions? storage = null, SimHypervisorOptions? hypervisor = null)
    {
        _output = output;
        DataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-inproc-{Guid.NewGuid():N}");
        Directory.CreateDirectory(DataDirectory);
        StorageOptions = storage ?? new SimStorageOptions { TimeScale = 0 };
        HypervisorOptions = hypervisor ?? new SimHypervisorOptions { TimeScale = 0 };
        DomainA = new SimStorageDomain(DomainId.New(), "a", 64L << 30, StorageOptions);
        DomainB = new SimStorageDomain(DomainId.New(), "b", 64L << 30, StorageOptions);
    }

    /// <summary>The coordinators' journal folder: every coordinator of the bed shares its SQLite files.</summary>
    public string DataDirectory { get; }
    public SimStorageOptions StorageOptions { get; }
    public SimHypervisorOptions HypervisorOptions { get; }
    public SimStorageDomain DomainA { get; }
    public SimStorageDomain DomainB { get; }
    public IReadOnlyList<ClusterNodeHandle> Nodes => _nodes;
    public SimMachine Machine(string hostId) => _machines[hostId];

    /// <summary>Step deadline and retry settings short enough for a test to see a resend within seconds.</summary>
    public MigrationActorSettings ActorSettings { get; init; } = MigrationActorSettings.Default with { StepDeadline = TimeSpan.FromSeconds(2) };
    public MigrationLimits Limits { get; init; } = MigrationLimits.Default;
    /// <summary>The pool's SPM lease for the SPM-capable hosts of this bed; null: their SPM runs unfenced.</summary>
    public SpmLeaseSettings? SpmLease { get; init; }
    /// <summary>HOCON laid over <see cref="TestHocon"/> on every node of this bed.</summary>
    public string? ExtraHocon { get; init; }

    public void Log(string text) => _output.WriteLine($"[{(DateTimeOffset.UtcNow - _started).TotalSeconds,6:F2}s] {text}");

    public async Task<ClusterNodeHandle> StartCoordinatorAsync(string name)
    {
        var settings = new CoordinatorSettings(DataDirectory, null, "http://127.0.0.1:0", ClusterSettings([CoordinatorSettings.Role]),
            Limits, ActorSettings);
        var node = await StartNodeAsync(name, services => services.AddSingleton<MigrationService>()
            .AddSingleton(sp => new LiveMigration.Coordinator.Migration.MigrationCatalog(sp.GetRequiredService<Akka.Actor.ActorSystem>())), akka => akka.WithCoordinator(settings));
        await AwaitAllUpAsync();
        return node;
    }

    /// <summary>A HostNode on its machine (created on first start, reused on a restart: the new hypervisor adopts its VMs).</summary>
    public async Task<SimMachine> StartHostAsync(string hostId, bool spmCapable)
    {
        var machine = MachineFor(hostId);
        if (machine.Node is not null)
        {
            // The previous HostNode is gone; its QEMUs are not: the new one adopts them.
            Assert.True(machine.Node.Stopped, $"{hostId} is still running");
            await machine.Hypervisor.DisposeAsync();
        }
        machine.Hypervisor = new SimHypervisor(machine.Qemus, machine.Pool, HypervisorOptions);
        await machine.Hypervisor.AdoptRunningVmsAsync();
        var roles = spmCapable ? new[] { HostNodeHosting.HostRole, HostNodeHosting.SpmRole } : [HostNodeHosting.HostRole];
        var components = new HostNodeComponents(hostId, machine.Pool, machine.Hypervisor);
        machine.Node = await StartNodeAsync(hostId, _ => { }, akka => akka
            .WithClusterNode(ClusterSettings(roles))
            .WithHostNodeActors(components, spmCapable, spmLease: SpmLease));
        // Up before the next node starts: nodes that come Up in the same round have no defined age, and the
        // specs rely on the first SPM-capable host being the oldest (the SPM singleton's home).
        await AwaitAllUpAsync();
        return machine;
    }

    private SimMachine MachineFor(string hostId)
    {
        if (!_machines.TryGetValue(hostId, out var machine))
            _machines[hostId] = machine = new SimMachine(hostId, new SimHost(hostId), new StoragePool([DomainA, DomainB]));
        return machine;
    }

    private ClusterNodeSettings ClusterSettings(IReadOnlyList<string> roles) => new()
    {
        Hostname = "127.0.0.1",
        Port = 0,
        // The first node has no address to seed with before it binds: it joins itself once started.
        Seeds = _seed is null ? [] : [_seed.ToString()],
        Roles = roles,
        ExtraHocon = ExtraHocon is null ? TestHocon : TestHocon + "\n" + ExtraHocon,
    };

    private async Task<ClusterNodeHandle> StartNodeAsync(string name, Action<IServiceCollection> services, Action<AkkaConfigurationBuilder> configure)
    {
        var first = _seed is null;
        var host = new HostBuilder()
            .ConfigureServices(s => services(s.AddAkka(ClusterNodeSettings.SystemName, akka =>
            {
                configure(akka);
                if (first) akka.AddStartup((system, _) => Akka.Cluster.Cluster.Get(system).Join(Akka.Cluster.Cluster.Get(system).SelfAddress));
            })))
            .Build();
        await host.StartAsync();
        var node = new ClusterNodeHandle(name, host);
        _seed ??= node.Address;
        _nodes.Add(node);
        Log($"{name} started at {node.Address}");
        return node;
    }

    /// <summary>Waits until every running node sees every running node Up.</summary>
    public async Task AwaitAllUpAsync(TimeSpan? timeout = null)
    {
        var running = _nodes.Where(n => !n.Stopped).ToList();
        var addresses = running.Select(n => n.Address).ToHashSet();
        await Eventually.HoldsAsync($"{running.Count} nodes Up", () => Task.FromResult(running.All(n =>
            addresses.IsSubsetOf(Akka.Cluster.Cluster.Get(n.System).State.Members
                .Where(m => m.Status == MemberStatus.Up).Select(m => m.Address)))), timeout ?? TimeSpan.FromSeconds(20));
        Log($"{running.Count} nodes Up: {string.Join(", ", running.Select(n => n.Name))}");
    }

    /// <summary>Stops one node through its coordinated shutdown (it leaves the cluster; singletons and shards move).</summary>
    public async Task StopNodeAsync(ClusterNodeHandle node)
    {
        if (node.Stopped) return;
        node.Stopped = true;
        await node.Host.StopAsync();
        node.Host.Dispose();
        Log($"{node.Name} stopped");
    }

    /// <summary>
    /// Seeds a 3-volume chain on domain A (1 MiB of data per layer) and starts a VM on it on the machine, before its
    /// HostNode starts (as the demo does with QEMU): the node's hypervisor adopts it and its first report lists it.
    /// A VM started later is not reported until something else changes (the port has no VM-started event).
    /// </summary>
    public async Task<SimVm> StartVmAsync(string hostId, string name)
    {
        var machine = MachineFor(hostId);
        Assert.True(machine.Node is null, $"start the VMs of {hostId} before its HostNode");
        var image = ImageId.New();
        VolumeId[] ids = [VolumeId.New(), VolumeId.New(), VolumeId.New()];
        VolumeRef? parent = null;
        foreach (var id in ids)
        {
            await DomainA.CreateVolumeAsync(new NewVolume(image, id, VolumeFormat.Cow, ChainCapacity, parent));
            DomainA.SeedAllocated(image, id, MiB);
            parent = new VolumeRef(DomainA.Id, id);
        }
        var drive = await machine.Pool.ResolveChainAsync(DomainA.Id, image);
        await using var starter = new SimHypervisor(machine.Qemus, machine.Pool, HypervisorOptions);
        var vm = await starter.StartVmAsync(new VmSpec(VmId.New(), name, [drive]));
        return new SimVm(vm.Id, image, ids[0], ids[1], ids[2]);
    }

    /// <summary>Whether this coordinator's shard region runs the migration's entity now.</summary>
    public static async Task<bool> RunsMigrationAsync(ClusterNodeHandle coordinator, MigrationId id)
    {
        var region = ActorRegistry.For(coordinator.System).Get<MigrationRegion>();
        var state = await region.Ask<CurrentShardRegionState>(GetShardRegionState.Instance, TimeSpan.FromSeconds(5));
        return state.Shards.Any(shard => shard.EntityIds.Contains(id.ToString()));
    }

    public MigrationService Service(ClusterNodeHandle coordinator) => coordinator.Host.Services.GetRequiredService<MigrationService>();

    /// <summary>Waits until the inventory lists every VM with its drives and knows both domains.</summary>
    public async Task AwaitInventoryAsync(ClusterNodeHandle coordinator, IReadOnlyCollection<VmId> vms, TimeSpan? timeout = null)
    {
        var service = Service(coordinator);
        await Eventually.HoldsAsync($"inventory lists {vms.Count} VMs and both domains", async () =>
        {
            var snapshot = await service.InventoryAsync();
            var listed = snapshot.Vms.Where(v => v.Vm.Drives.Count > 0).Select(v => v.Vm.Id).ToHashSet();
            return vms.All(listed.Contains) && snapshot.Domains.Any(d => d.Id == DomainB.Id) && snapshot.Domains.Any(d => d.Id == DomainA.Id);
        }, timeout ?? TimeSpan.FromSeconds(20));
        Log($"inventory lists {vms.Count} VMs");
    }

    public static MigrationRequest MoveToB(SimVm vm, DomainId destination, MigrationStrategy strategy) =>
        new(vm.Id, [new DiskMoveRequest(vm.Image, destination)], strategy,
            Retry: new RetryPolicy(30, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1)));

    /// <summary>Starts a migration through the API's service; a refusal fails the test with its code and message.</summary>
    public async Task<MigrationId> StartMigrationAsync(ClusterNodeHandle coordinator, MigrationRequest request)
    {
        var outcome = await Service(coordinator).StartAsync(request);
        Assert.True(outcome.Accepted, $"migration refused: {outcome.Code} {outcome.Message}");
        Log($"migration {outcome.Migration} of VM {request.Vm} started ({request.Strategy})");
        return outcome.Migration!.Value;
    }

    /// <summary>Polls the saga until it has finished; returns its last state.</summary>
    public async Task<MigrationView> AwaitFinishedAsync(ClusterNodeHandle coordinator, MigrationId id, TimeSpan? timeout = null)
    {
        var service = Service(coordinator);
        MigrationView? last = null;
        await Eventually.HoldsAsync($"migration {id} finished", async () =>
        {
            last = await service.GetAsync(id);
            return last?.Finished == true;
        }, timeout ?? TimeSpan.FromSeconds(60), () => $"last status {last?.Status}");
        Log($"migration {id} finished: {last!.Status}");
        return last;
    }

    /// <summary>Polls the saga until a disk has started <paramref name="step"/>.</summary>
    public async Task AwaitStepAsync(ClusterNodeHandle coordinator, MigrationId id, MigrationStep step, TimeSpan? timeout = null)
    {
        var service = Service(coordinator);
        MigrationView? last = null;
        await Eventually.HoldsAsync($"migration {id} at {step}", async () =>
        {
            last = await service.GetAsync(id);
            return last?.Disks.Any(d => d.Timings.Any(t => t.Step == step)) == true;
        }, timeout ?? TimeSpan.FromSeconds(30), () => $"last status {last?.Status}, steps {string.Join(",", last?.Disks.SelectMany(d => d.Timings.Select(t => t.Step)) ?? [])}");
        Log($"migration {id} reached {step}");
    }

    /// <summary>Asserts the VM's drive runs on the destination chain only, and the source image is gone.</summary>
    public async Task AssertRunsOnAsync(SimMachine machine, SimVm vm, SimStorageDomain destination, SimStorageDomain source)
    {
        var described = await machine.Hypervisor.DescribeVmAsync(vm.Id);
        Assert.True(described.Running);
        var drive = Assert.Single(described.Drives);
        Assert.NotEmpty(drive.OpenChain);
        Assert.All(drive.OpenChain, path => Assert.StartsWith($"sim:{destination.Id}/", path));
        Assert.DoesNotContain(vm.Image, await source.ListImagesAsync());
        var moved = await destination.DescribeImageAsync(vm.Image);
        Assert.All(moved.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.Null(drive.Job);
    }

    /// <summary>Stops the nodes one by one (together they wait on each other's exit), newest first, then the sim hosts.</summary>
    public async ValueTask DisposeAsync()
    {
        foreach (var node in _nodes.AsEnumerable().Reverse())
        {
            try { await StopNodeAsync(node); }
            catch (Exception e) { Log($"stopping {node.Name}: {e.Message}"); }
        }
        foreach (var machine in _machines.Values)
        {
            if (machine.Node is not null) await machine.Hypervisor.DisposeAsync();
            await machine.Qemus.DisposeAsync();
        }
        await LiveMigration.HostNode.Storage.File.FileStorageDomain.RemovalsFinishedAsync().WaitAsync(TimeSpan.FromSeconds(30)); // a delete's unlinks end first
        try { Directory.Delete(DataDirectory, recursive: true); }
        catch (IOException e) { Log($"could not delete {DataDirectory}: {e.Message}"); }
    }
}

public static class Eventually
{
    /// <summary>Polls <paramref name="condition"/> every 100 ms until it holds; fails the test with <paramref name="what"/> on timeout.</summary>
    public static async Task HoldsAsync(string what, Func<Task<bool>> condition, TimeSpan timeout, Func<string>? detail = null)
    {
        var deadline = DateTimeOffset.UtcNow + timeout;
        Exception? lastError = null;
        while (DateTimeOffset.UtcNow < deadline)
        {
            try
            {
                if (await condition()) return;
                lastError = null;
            }
            catch (Exception e) when (e is AskTimeoutException or TaskCanceledException or TimeoutException)
            {
                lastError = e;
            }
            await Task.Delay(100);
        }
        Assert.Fail($"timed out after {timeout.TotalSeconds:F0} s waiting for: {what}. {detail?.Invoke()} {lastError?.Message}");
    }
}
