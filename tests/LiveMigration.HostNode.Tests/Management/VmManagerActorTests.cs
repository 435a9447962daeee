using Akka.Actor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.HostNode.Tests.Management;

/// <summary>The host's VM manager over the sim adapters, with the SPM's storage changes: create, snapshot, stop, start.</summary>
public sealed class VmManagerActorTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly string _dataDirectory = Path.Combine(Path.GetTempPath(), $"lsm-mgr-{Guid.NewGuid():N}");
    private readonly SimHost _host = new("manager-host");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private readonly StoragePool _pool;
    private readonly SimHypervisor _hypervisor;
    private readonly SpmStorage _spm;
    private readonly VmCatalog _catalog;
    private readonly IActorRef _manager;

    public VmManagerActorTests()
    {
        _pool = new StoragePool([_a]);
        _hypervisor = new SimHypervisor(_host, _pool);
        _spm = new SpmStorage(_pool, _ => { });
        _catalog = new VmCatalog(_dataDirectory);
        _manager = Sys.ActorOf(VmManagerActor.Props("host-1", _hypervisor, _pool, _catalog, new DomainRoots(_dataDirectory),
            new GuestIo(_dataDirectory), listenForDomains: false));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _hypervisor.DisposeAsync();
        await _host.DisposeAsync();
        if (Directory.Exists(_dataDirectory)) Directory.Delete(_dataDirectory, recursive: true);
    }

    private async Task<T> AskAsync<T>(IManagementMessage command) where T : IManagementMessage
    {
        var reply = await _manager.Ask<IManagementMessage>(command, TimeSpan.FromSeconds(10));
        return reply is T expected ? expected : throw new Xunit.Sdk.XunitException($"expected {typeof(T).Name}, got {reply}");
    }

    [Fact]
    public async Task A_vm_is_created_snapshotted_stopped_and_started_again_on_its_longer_chain()
    {
        var vm = VmId.New();
        var disks = Assert.IsType<VmDisksCreated>(await _spm.HandleAsync(new CreateVmDisks(vm, [new NewDisk(16 * MiB, _a.Id, 1)]))).Disks;

        var created = await AskAsync<ManagedVm>(new CreateVm(vm, "web", disks));
        Assert.True(created.Vm.Running);
        Assert.Equal(2, Assert.Single(created.Vm.Drives).Chain.Count);

        var again = await AskAsync<ManagementRefused>(new CreateVm(vm, "web", disks));
        Assert.Equal(ErrorCodes.Conflict, again.Code);

        var leaves = created.Vm.Drives.Select(d => new DiskLeaf(d.Image, d.Chain[^1])).ToValueList();
        var made = Assert.IsType<SnapshotVolumesCreated>(await _spm.HandleAsync(new CreateSnapshotVolumes(vm, leaves)));
        var snapshotted = await AskAsync<ManagedVm>(new SnapshotVm(vm, made.NewLeaves));
        Assert.Equal(3, Assert.Single(snapshotted.Vm.Drives).Chain.Count);
        Assert.Equal(made.NewLeaves[0].Leaf, snapshotted.Vm.Drives[0].Chain[^1]);

        var stopped = await AskAsync<ManagedVm>(new StopVm(vm));
        Assert.False(stopped.Vm.Running);
        Assert.Equal(3, Assert.Single(stopped.Vm.Drives).Chain.Count);
        Assert.DoesNotContain(await _hypervisor.ListVmsAsync(), v => v.Id == vm && v.Running);
        var described = await AskAsync<ManagedVm>(new GetManagedVm(vm));
        Assert.False(described.Vm.Running);
        var io = await AskAsync<ManagementRefused>(new StartGuestIo(vm, MiB, 1));
        Assert.Equal(ErrorCodes.VmNotRunning, io.Code);

        var started = await AskAsync<ManagedVm>(new StartVm(vm));
        Assert.True(started.Vm.Running);
        Assert.Equal(snapshotted.Vm.Drives[0].Chain, started.Vm.Drives[0].Chain);

        // a sim VM's disks are sizes, not data: no guest to write or verify, and the refusal says why
        var simIo = await AskAsync<ManagementRefused>(new StartGuestIo(vm, MiB, 1));
        Assert.Equal(ErrorCodes.InvalidArgument, simIo.Code);
        Assert.Contains("sim host", simIo.Message);
        Assert.Contains("sim host", (await AskAsync<ManagementRefused>(new VerifyGuest(vm))).Message);
    }

    [Fact]
    public async Task Commands_on_a_vm_the_host_does_not_have_are_refused_as_not_found()
    {
        var unknown = VmId.New();
        Assert.Equal(ErrorCodes.VmNotFound, (await AskAsync<ManagementRefused>(new StartVm(unknown))).Code);
        Assert.Equal(ErrorCodes.VmNotFound, (await AskAsync<ManagementRefused>(new StopVm(unknown))).Code);
        Assert.Equal(ErrorCodes.VmNotFound, (await AskAsync<ManagementRefused>(new GetManagedVm(unknown))).Code);
        Assert.Equal(ErrorCodes.VmNotFound, (await AskAsync<ManagementRefused>(new VerifyGuest(unknown))).Code);
        Assert.Empty(_catalog.All());
    }

    [Fact]
    public async Task A_vm_on_a_domain_whose_announcement_has_not_reached_the_host_yet_waits_for_it_instead_of_being_refused()
    {
        // The SPM created domain b and the VM's disks on it; this host attaches b only when the announcement arrives, a
        // moment after the CreateVm (pubsub gives no order between the two).
        var b = new SimStorageDomain(DomainId.New(), "b", 4L << 30);
        var spm = new SpmStorage(new StoragePool([_a, b]), _ => { });
        var vm = VmId.New();
        var disks = Assert.IsType<VmDisksCreated>(await spm.HandleAsync(new CreateVmDisks(vm, [new NewDisk(16 * MiB, b.Id, 1)]))).Disks;

        var creating = AskAsync<ManagedVm>(new CreateVm(vm, "early", disks));
        await Task.Delay(300);
        Assert.False(creating.IsCompleted);
        _pool.Attach(b);

        var created = await creating;
        Assert.True(created.Vm.Running);
        Assert.Equal(b.Id, Assert.Single(created.Vm.Drives).LeafDomain);
    }
}
