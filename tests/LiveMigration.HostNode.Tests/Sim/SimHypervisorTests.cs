using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Hypervisor.Sim;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Sim;

public sealed class SimHypervisorTests : IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private const string Mirror = nameof(IHypervisor.StartMirrorAsync);
    private readonly SimHost _host = new("unit-host");
    private readonly SimStorageDomain _source = new(DomainId.New(), "a", 4L << 30);
    private readonly SimStorageDomain _destination = new(DomainId.New(), "b", 4L << 30);
    private readonly List<SimHypervisor> _hypervisors = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var h in _hypervisors) await h.DisposeAsync();
        await _host.DisposeAsync();
    }

    private SimHypervisor NewHypervisor(SimHypervisorOptions? options = null)
    {
        var h = new SimHypervisor(_host, new StoragePool([_source, _destination]), options);
        _hypervisors.Add(h);
        return h;
    }

    /// <summary>A running VM on a seeded chain whose leaf holds <paramref name="leafBytes"/>, cloned onto the destination.</summary>
    private async Task<(VmInfo Vm, SeededChain Chain)> StartCloneAsync(SimHypervisor hypervisor, long leafBytes = 8 * MiB)
    {
        var chain = await ChainSeeder.SeedAsync(_source, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _source.SeedAllocated(chain.Image, chain.Leaf, leafBytes);
        var drive = await new StoragePool([_source, _destination]).ResolveChainAsync(_source.Id, chain.Image);
        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "unit", [drive]));
        await _destination.CloneImageStructureAsync(_source, chain.Image, TestOwners.Default);
        return (vm, chain);
    }

    private MirrorRequest MirrorOf(VmInfo vm, SeededChain chain, long speed = 0, CopyMode mode = CopyMode.Background) =>
        new(vm.Id, chain.Image, chain.LayerOn(_destination, chain.Leaf), speed, mode);

    private IReadOnlyList<ChainLayer> DestinationBacking(SeededChain chain) =>
        [chain.LayerOn(_destination, chain.Base), chain.LayerOn(_destination, chain.Middle)];

    private static async Task<BlockJobInfo> JobAsync(IHypervisor h, VmInfo vm, SeededChain chain) =>
        await h.GetBlockJobAsync(vm.Id, chain.Image) ?? throw new Xunit.Sdk.XunitException("the drive has no block job");

    [Fact]
    public async Task A_guest_dirtying_faster_than_a_background_mirror_keeps_it_from_ready_but_write_blocking_converges()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 64 * MiB, GuestDirtyBytesPerSecond = 128 * MiB });
        using var events = new HypervisorEventLog(hypervisor);
        var (background, chainA) = await StartCloneAsync(hypervisor);
        var (blocking, chainB) = await StartCloneAsync(hypervisor);

        await hypervisor.StartMirrorAsync(MirrorOf(background, chainA));
        await hypervisor.StartMirrorAsync(MirrorOf(blocking, chainB, mode: CopyMode.WriteBlocking));
        await events.WaitForAsync<BlockJobReady>(e => e.Vm == blocking.Id);
        await Task.Delay(200);

        var stuck = await JobAsync(hypervisor, background, chainA);
        Assert.Equal(BlockJobPhase.Running, stuck.Phase);
        Assert.True(stuck.Length > 8 * MiB && stuck.Offset < stuck.Length, $"offset {stuck.Offset} of {stuck.Length}");
        Assert.DoesNotContain(events.Events, e => e is BlockJobReady r && r.Vm == background.Id);

        await hypervisor.PivotAsync(blocking.Id, chainB.Image, DestinationBacking(chainB));
    }

    [Fact]
    public async Task A_speed_limit_holds_the_mirror_back_until_it_is_lifted()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartCloneAsync(hypervisor);

        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain, speed: 4 * MiB));
        await Task.Delay(100);
        var slow = await JobAsync(hypervisor, vm, chain);
        Assert.Equal(BlockJobPhase.Running, slow.Phase);
        Assert.InRange(slow.Offset, 1, 6 * MiB);

        await hypervisor.SetJobSpeedAsync(vm.Id, chain.Image, 0);
        await events.WaitForAsync<BlockJobReady>(e => e.Vm == vm.Id, TimeSpan.FromSeconds(5));
        Assert.Equal(8 * MiB, (await JobAsync(hypervisor, vm, chain)).Offset);
    }

    [Fact]
    public async Task A_failed_pivot_changes_nothing_and_its_retry_pivots()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartCloneAsync(hypervisor);
        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain));
        await events.WaitForAsync<BlockJobReady>(e => e.Vm == vm.Id);
        hypervisor.Faults.FailNext(nameof(IHypervisor.PivotAsync), code: ErrorCodes.QmpError);

        await ContractAssert.FailsWithAsync(ErrorCodes.QmpError, () => hypervisor.PivotAsync(vm.Id, chain.Image, DestinationBacking(chain)));
        Assert.Equal(BlockJobPhase.Ready, (await JobAsync(hypervisor, vm, chain)).Phase);
        Assert.Equal(chain.PathsOn(_source, chain.Base, chain.Middle, chain.Leaf), (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);

        var pivoted = await hypervisor.PivotAsync(vm.Id, chain.Image, DestinationBacking(chain));
        Assert.Equal(chain.PathsOn(_destination, chain.Base, chain.Middle, chain.Leaf), pivoted.OpenChain);
    }

    [Fact]
    public async Task QEMU_dying_half_way_through_the_mirror_stops_the_vm()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 64 * MiB });
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartCloneAsync(hypervisor);
        hypervisor.Faults.DieNext(Mirror, atFraction: 0.5);

        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain));

        var stopped = await events.WaitForAsync<VmStopped>(e => e.Vm == vm.Id);
        Assert.Contains("injected", stopped.Reason);
        Assert.DoesNotContain(events.Events, e => e is BlockJobReady);
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        Assert.DoesNotContain(vm.Id, _host.RunningVms);
    }

    [Fact]
    public async Task A_mirror_running_out_of_space_fails_its_job_and_the_drive_stays_on_the_source()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartCloneAsync(hypervisor);
        hypervisor.Faults.OutOfSpaceNext(Mirror, atFraction: 0.5);

        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain));

        var failed = await events.WaitForAsync<BlockJobFailed>(e => e.Vm == vm.Id);
        Assert.Contains("No space left", failed.Error);
        Assert.Null(await hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        Assert.Equal(chain.PathsOn(_source, chain.Base, chain.Middle, chain.Leaf), (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);

        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain));
        await events.WaitForAsync<BlockJobReady>(e => e.Vm == vm.Id);
    }

    [Fact]
    public async Task A_stalled_mirror_stops_progressing_until_released()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { MirrorBytesPerSecond = 256 * MiB });
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartCloneAsync(hypervisor);
        var stall = hypervisor.Faults.StallNext(Mirror, atFraction: 0.5);

        await hypervisor.StartMirrorAsync(MirrorOf(vm, chain));
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        await Task.Delay(50);
        var held = await JobAsync(hypervisor, vm, chain);
        Assert.Equal((BlockJobPhase.Running, 4 * MiB), (held.Phase, held.Offset));

        stall.Release();
        await events.WaitForAsync<BlockJobReady>(e => e.Vm == vm.Id);
    }

    [Fact]
    public async Task Events_reach_only_instances_that_started_or_adopted_the_vm()
    {
        var first = NewHypervisor();
        var (vm, _) = await StartCloneAsync(first);
        var stranger = NewHypervisor();
        using var firstEvents = new HypervisorEventLog(first);
        using var strangerEvents = new HypervisorEventLog(stranger);
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotFound, () => stranger.DescribeVmAsync(vm.Id));

        _host.KillVm(vm.Id);

        await firstEvents.WaitForAsync<VmStopped>(e => e.Vm == vm.Id);
        Assert.Empty(strangerEvents.Events);
        Assert.Empty(await stranger.AdoptRunningVmsAsync());
        await first.StopVmAsync(vm.Id);
    }

    [Fact]
    public async Task Wrong_layers_are_refused_before_anything_changes()
    {
        var hypervisor = NewHypervisor();
        var (vm, chain) = await StartCloneAsync(hypervisor);
        var missing = new ChainLayer(new VolumeRef(_source.Id, VolumeId.New()), "sim:missing", VolumeFormat.Cow);

        await ContractAssert.FailsWithAsync(ErrorCodes.VolumeNotFound,
            () => hypervisor.StartVmAsync(new VmSpec(VmId.New(), "bad", [new DriveChain(chain.Image, [missing])])));
        await ContractAssert.FailsWithAsync(ErrorCodes.InvalidArgument,
            () => hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, chain.LayerOn(_destination, chain.Middle)));
        await ContractAssert.FailsWithAsync(ErrorCodes.InvalidArgument,
            () => hypervisor.SwitchBackingChainAsync(vm.Id, chain.Image, [chain.LayerOn(_destination, chain.Base)]));
        await ContractAssert.FailsWithAsync(ErrorCodes.NoSuchJob, () => hypervisor.SetJobSpeedAsync(vm.Id, chain.Image, MiB));
        await ContractAssert.FailsWithAsync(ErrorCodes.ImageNotFound, () => hypervisor.GetBlockJobAsync(vm.Id, ImageId.New()));
        Assert.Equal(chain.PathsOn(_source, chain.Base, chain.Middle, chain.Leaf), (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);
    }

    [Fact]
    public async Task Twenty_vms_mirror_and_pivot_in_parallel()
    {
        var hypervisor = NewHypervisor(new SimHypervisorOptions { TimeScale = 0.01 });
        using var events = new HypervisorEventLog(hypervisor);
        var started = new List<(VmInfo Vm, SeededChain Chain)>();
        for (var i = 0; i < 20; i++) started.Add(await StartCloneAsync(hypervisor, leafBytes: 64 * MiB));

        await Task.WhenAll(started.Select(s => Task.Run(async () =>
        {
            await hypervisor.StartMirrorAsync(MirrorOf(s.Vm, s.Chain));
            foreach (var id in s.Chain.Internals) await _destination.CopyVolumeDataAsync(_source, s.Chain.Image, id);
            await events.WaitForAsync<BlockJobReady>(e => e.Vm == s.Vm.Id);
            await hypervisor.PivotAsync(s.Vm.Id, s.Chain.Image, DestinationBacking(s.Chain));
            await events.WaitForAsync<BlockJobCompleted>(e => e.Vm == s.Vm.Id);
        })));

        foreach (var (vm, chain) in started)
            Assert.Equal(chain.PathsOn(_destination, chain.Base, chain.Middle, chain.Leaf), (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);
        Assert.Equal(20, events.Events.OfType<BlockJobCompleted>().Count());
    }
}
