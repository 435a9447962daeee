using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Sim;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Migration;

/// <summary>
/// DiskMover runs the actors' step implementations, and where its own copies differed the actors' behaviour now holds:
/// a switch that fails is probed before anything is undone (DESIGN §7.4), and a post-copy gets the SPM's space promise
/// before the snapshot moves the guest's writes. Over the sim adapters: a running VM on a 3-volume chain on domain A.
/// </summary>
public sealed class DiskMoverSwitchTests : IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimHost _host = new("mover-host");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30);
    private StoragePool _pool = null!;
    private SimHypervisor _hypervisor = null!;
    private SeededChain _chain = null!;
    private VmId _vm;

    public async Task InitializeAsync()
    {
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _a.SeedAllocated(_chain.Image, _chain.Leaf, 8 * MiB);
    }

    public async Task DisposeAsync()
    {
        await _hypervisor.DisposeAsync();
        await _host.DisposeAsync();
    }

    private async Task StartVmAsync(SimStorageDomain? destination = null)
    {
        _b = destination ?? _b;
        _pool = new StoragePool([_a, _b]);
        _hypervisor = new SimHypervisor(_host, _pool);
        var drive = await _pool.ResolveChainAsync(_a.Id, _chain.Image);
        _vm = (await _hypervisor.StartVmAsync(new VmSpec(VmId.New(), "mover-vm", [drive]))).Id;
    }

    private async Task<DriveState> DriveAsync() => (await _hypervisor.DescribeVmAsync(_vm)).Drive(_chain.Image);

    [Fact]
    public async Task A_pivot_that_took_effect_but_answered_with_a_timeout_is_rolled_forward_and_the_chain_the_VM_runs_on_is_kept()
    {
        await StartVmAsync();
        var mover = new DiskMover(_pool, new PivotAnswersTimeout(_hypervisor));

        var report = await mover.MoveAsync(_vm, _chain.Image, _a.Id, _b.Id);

        // The probe found the drive on B: B's chain is LEGAL and kept, A's was retired.
        var onB = _chain.PathsOn(_b, _chain.Base, _chain.Middle, _chain.Leaf);
        Assert.Equal(onB, (await DriveAsync()).OpenChain);
        Assert.Equal(onB, report.FinalDrive.OpenChain);
        Assert.All((await _b.DescribeImageAsync(_chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.DoesNotContain(_chain.Image, await _a.ListImagesAsync());
    }

    [Fact]
    public async Task QEMU_dying_at_the_pivot_with_no_record_to_ask_suspends_the_move_and_deletes_neither_chain()
    {
        await StartVmAsync();
        _hypervisor.Faults.DieNext(nameof(IHypervisor.PivotAsync));

        var suspended = await Assert.ThrowsAsync<MoveSuspendedException>(() =>
            new DiskMover(_pool, _hypervisor).MoveAsync(_vm, _chain.Image, _a.Id, _b.Id));

        Assert.Equal("pivot", suspended.Step);
        Assert.Equal(ErrorCodes.SwitchOutcomeUnknown, Assert.IsType<OperationFailedException>(suspended.InnerException).Code);
        // Whether the pivot landed nobody can tell: both chains stay for an operator (DESIGN §7.4), nothing was rolled back.
        Assert.Equal(_chain.Ids, (await _a.DescribeImageAsync(_chain.Image)).Volumes.Select(v => v.Id));
        Assert.Equal(_chain.Ids, (await _b.DescribeImageAsync(_chain.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task A_post_copy_onto_a_domain_that_cannot_take_the_copy_is_refused_before_the_snapshot_and_the_VM_stays_on_A()
    {
        // Room for the new (empty) leaf, not for the chain's 10 MiB copy behind it.
        await StartVmAsync(new SimStorageDomain(DomainId.New(), "small-b", 4 * MiB));
        var onA = (await DriveAsync()).OpenChain;

        var refused = await Assert.ThrowsAsync<OperationFailedException>(() =>
            new DiskMover(_pool, _hypervisor).MoveAsync(_vm, _chain.Image, _a.Id, _b.Id, new MoveOptions(MoveStrategy.PostCopy)));

        Assert.Equal(ErrorCodes.NotEnoughSpace, refused.Code);
        Assert.Contains(_b.Id.ToString(), refused.Message);
        Assert.Equal(onA, (await DriveAsync()).OpenChain);
        Assert.Empty(await _b.ListImagesAsync());
        Assert.Equal(_chain.Ids, (await _a.DescribeImageAsync(_chain.Image)).Volumes.Select(v => v.Id));
    }

    /// <summary>A hypervisor whose pivot takes effect and then answers TIMEOUT, as a lost QMP answer does.</summary>
    private sealed class PivotAnswersTimeout(IHypervisor inner) : IHypervisor
    {
        public string Kind => inner.Kind;
        public event Action<HypervisorEvent>? EventRaised
        {
            add => inner.EventRaised += value;
            remove => inner.EventRaised -= value;
        }
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
        public Task<VmInfo> StartVmAsync(VmSpec spec, CancellationToken ct = default) => inner.StartVmAsync(spec, ct);
        public Task StopVmAsync(VmId vm, CancellationToken ct = default) => inner.StopVmAsync(vm, ct);
        public Task<IReadOnlyList<VmInfo>> AdoptRunningVmsAsync(CancellationToken ct = default) => inner.AdoptRunningVmsAsync(ct);
        public Task<IReadOnlyList<VmInfo>> ListVmsAsync(CancellationToken ct = default) => inner.ListVmsAsync(ct);
        public Task<VmInfo> DescribeVmAsync(VmId vm, CancellationToken ct = default) => inner.DescribeVmAsync(vm, ct);
        public Task<BlockJobInfo> StartMirrorAsync(MirrorRequest request, CancellationToken ct = default) => inner.StartMirrorAsync(request, ct);
        public Task<BlockJobInfo?> GetBlockJobAsync(VmId vm, ImageId drive, CancellationToken ct = default) => inner.GetBlockJobAsync(vm, drive, ct);
        public Task SetJobSpeedAsync(VmId vm, ImageId drive, long bytesPerSecond, CancellationToken ct = default) =>
            inner.SetJobSpeedAsync(vm, drive, bytesPerSecond, ct);
        public Task<DriveState> CancelMirrorAsync(VmId vm, ImageId drive, CancellationToken ct = default) => inner.CancelMirrorAsync(vm, drive, ct);
        public Task<DriveState> LiveSnapshotAsync(VmId vm, ImageId drive, ChainLayer newLeaf, CancellationToken ct = default) =>
            inner.LiveSnapshotAsync(vm, drive, newLeaf, ct);
        public Task<DriveState> SwitchBackingChainAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> newBacking, CancellationToken ct = default) =>
            inner.SwitchBackingChainAsync(vm, drive, newBacking, ct);

        public async Task<DriveState> PivotAsync(VmId vm, ImageId drive, IReadOnlyList<ChainLayer> destinationBacking, CancellationToken ct = default)
        {
            await inner.PivotAsync(vm, drive, destinationBacking, ct);
            throw new OperationFailedException(ErrorCodes.Timeout, $"the answer to the pivot of drive {drive} was lost");
        }
    }
}
