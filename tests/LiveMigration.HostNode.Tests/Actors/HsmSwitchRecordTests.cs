using LiveMigration.HostNode.Hsm;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Management;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Sim;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>
/// The switch intent in the host's VM record (DESIGN §7.1) under stale commands: a switch QEMU refuses while it runs
/// with no block job cannot land, so the HSM settles its intent at once instead of leaving a "switch begun" that only
/// a probe could clear (and none comes for a stale copy), which would refuse the VM a start (STALE_RECORD).
/// </summary>
public sealed class HsmSwitchRecordTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimHost _host = new("switch-host");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30);
    private readonly StoragePool _pool;
    private readonly string _dataDirectory = Directory.CreateTempSubdirectory("lsm-switch-").FullName;
    private SimHypervisor _hypervisor = null!;
    private SeededChain _chain = null!;
    private VmInfo _vm = null!;

    public HsmSwitchRecordTests() => _pool = new StoragePool([_a, _b]);

    public async Task InitializeAsync()
    {
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _a.SeedAllocated(_chain.Image, _chain.Leaf, 8 * MiB);
        _hypervisor = new SimHypervisor(_host, _pool);
        _vm = await _hypervisor.StartVmAsync(new VmSpec(VmId.New(), "switch-vm", [await _pool.ResolveChainAsync(_a.Id, _chain.Image)]));
    }

    public async Task DisposeAsync()
    {
        await _hypervisor.DisposeAsync();
        await _host.DisposeAsync();
        Directory.Delete(_dataDirectory, recursive: true);
    }

    [Fact]
    public async Task A_pivot_with_no_mirror_to_complete_leaves_no_switch_begun_in_the_record()
    {
        var catalog = new VmCatalog(_dataDirectory);
        var (spm, hsm, saga) = (Sys.ActorOf(SpmActor.Props(_pool)), Sys.ActorOf(HsmActor.Props(_hypervisor, _pool, catalog)), CreateTestProbe());
        var driver = new StepDriver(_vm.Id, new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PreCopy);
        await driver.SucceedAsync(spm, Step.CloneImageStructure, saga);

        // A late Pivot (say, of a migration whose mirror was cancelled) finds no mirror: QEMU runs on the source.
        var reply = await driver.RunAsync(hsm, Step.Pivot, saga);

        // Refused by QEMU itself, after the intent was written (not before, which would prove nothing here).
        Assert.Equal(ErrorCodes.NoSuchJob, Assert.IsType<OperationFailed>(reply).Code);
        var record = catalog.Find(_vm.Id)!;
        Assert.Null(record.PendingOf(_chain.Image));
        Assert.Equal(new VolumeRef(_a.Id, _chain.Leaf), record.LeafOf(_chain.Image)?.Leaf);
    }
}
