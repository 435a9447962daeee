using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Contract;

/// <summary>
/// The behaviour every <see cref="IHypervisor"/> adapter must show (pre-copy, cancel, post-copy, QEMU killed,
/// host restarted), run against each kind together with storage domains of the matching kind.
/// A subclass provides exactly:
/// <list type="bullet">
/// <item><see cref="CreateDomainsAsync"/>: two new, empty domains of one kind, each with room for a few 64 MiB images
///   (file: two <c>FileStorageDomain.CreateAsync(root, DomainId.New(), name, 1 GiB, ct)</c> under a temp root it owns);</item>
/// <item><see cref="WriteLayerDataAsync"/>: writes <c>length</c> bytes of <c>pattern</c> at <c>offset</c> into that one layer
///   (file: <c>qemu-io</c> on <c>domain.Locate(image, volume)</c>; sim: <c>SeedAllocated</c>);</item>
/// <item><see cref="CreateHypervisor"/>: a NEW adapter instance on the same host at every call (qmp:
///   <c>new QmpHypervisor(new QmpHypervisorOptions { RunDirectory = sameDir, ... })</c>; sim: <c>new SimHypervisor(sameSimHost, pool)</c>).
///   The second call is the "restarted HostNode"; the base disposes the previous instance first and every instance at the end;</item>
/// <item><see cref="KillVmProcessAsync"/>: kills the VM's QEMU as SIGKILL would (qmp: kill <c>vm.Pid</c>; sim: <c>SimHost.KillVm</c>);</item>
/// <item>optionally an override of <see cref="DisposeAsync"/> that kills what is left and deletes its folders, calling the base first.</item>
/// </list>
/// </summary>
public abstract class HypervisorContract : IAsyncLifetime
{
    /// <summary>Slow enough that a 1 MiB leaf stays RUNNING for seconds; fast enough to finish once raised.</summary>
    private const long CrawlBytesPerSecond = 64 << 10;

    private readonly List<IHypervisor> _hypervisors = new();

    protected IStorageDomain Source { get; private set; } = null!;
    protected IStorageDomain Destination { get; private set; } = null!;
    protected StoragePool Pool { get; private set; } = null!;

    protected abstract Task<(IStorageDomain Source, IStorageDomain Destination)> CreateDomainsAsync();

    protected abstract Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern);

    protected abstract IHypervisor CreateHypervisor(StoragePool pool);

    protected abstract Task KillVmProcessAsync(VmInfo vm);

    public virtual async Task InitializeAsync()
    {
        (Source, Destination) = await CreateDomainsAsync();
        Pool = new StoragePool([Source, Destination]);
    }

    public virtual async Task DisposeAsync()
    {
        foreach (var h in _hypervisors) await h.DisposeAsync();
    }

    // ---- the tests ----

    [Fact]
    public async Task StartVm_and_StopVm_are_idempotent_and_an_unknown_vm_is_not_found()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartVmOnSeededChainAsync(hypervisor);
        // The host's reporter tells the inventory about a new VM from this event.
        await events.WaitForAsync<VmStarted>(e => e.Vm == vm.Id);

        Assert.True(vm.Running);
        Assert.Equal(chain.PathsOn(Source, chain.Base, chain.Middle, chain.Leaf), vm.Drive(chain.Image).OpenChain);
        Assert.Null(vm.Drive(chain.Image).Job);
        var again = await hypervisor.StartVmAsync(Spec(vm.Id, await Pool.ResolveChainAsync(Source.Id, chain.Image)));
        Assert.Equal(vm.Pid, again.Pid);
        Assert.Single(events.Events.OfType<VmStarted>()); // a repeated start starts nothing
        Assert.Contains(await hypervisor.ListVmsAsync(), v => v.Id == vm.Id && v.Running);

        await hypervisor.StopVmAsync(vm.Id);
        await hypervisor.StopVmAsync(vm.Id);
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotFound, () => hypervisor.DescribeVmAsync(VmId.New()));
    }

    [Fact]
    public async Task PreCopy_mirrors_the_leaf_and_pivots_the_drive_onto_the_destination_chain()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartVmOnSeededChainAsync(hypervisor);

        await Destination.CloneImageStructureAsync(Source, chain.Image, TestOwners.Default);
        var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, chain.LayerOn(Destination, chain.Leaf)));
        Assert.Equal(chain.Image, job.Drive);
        Assert.Contains(job.Phase, new[] { BlockJobPhase.Running, BlockJobPhase.Ready });
        Assert.Equal(job.JobId, (await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, chain.LayerOn(Destination, chain.Leaf)))).JobId);
        foreach (var id in chain.Internals) await Destination.CopyVolumeDataAsync(Source, chain.Image, id);

        await WaitReadyAsync(hypervisor, events, vm.Id, chain.Image);
        var ready = await hypervisor.GetBlockJobAsync(vm.Id, chain.Image);
        Assert.Equal(BlockJobPhase.Ready, ready!.Phase);
        Assert.Equal(ready.Length, ready.Offset);

        var backing = new[] { chain.LayerOn(Destination, chain.Base), chain.LayerOn(Destination, chain.Middle) };
        var pivoted = await hypervisor.PivotAsync(vm.Id, chain.Image, backing);

        var onDestination = chain.PathsOn(Destination, chain.Base, chain.Middle, chain.Leaf);
        Assert.Equal(onDestination, pivoted.OpenChain);
        await events.WaitForAsync<BlockJobCompleted>(e => e.Vm == vm.Id && e.Drive == chain.Image);
        Assert.Null(await hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        Assert.Equal(onDestination, (await hypervisor.PivotAsync(vm.Id, chain.Image, backing)).OpenChain);
        Assert.Equal(onDestination, (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);

        await Destination.MarkLegalAsync(chain.Image, chain.Leaf);
        await Source.DeleteImageAsync(chain.Image);
        var after = await hypervisor.DescribeVmAsync(vm.Id);
        Assert.True(after.Running);
        Assert.Equal(onDestination, after.Drive(chain.Image).OpenChain);
        Assert.All((await Destination.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task CancelMirror_leaves_the_drive_on_its_source_and_only_illegal_leftovers_on_the_destination()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartVmOnSeededChainAsync(hypervisor);
        await Destination.CloneImageStructureAsync(Source, chain.Image, TestOwners.Default);

        var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, chain.LayerOn(Destination, chain.Leaf), CrawlBytesPerSecond));
        Assert.Equal(BlockJobPhase.Running, job.Phase);
        // asked at once, while the crawling job is surely not READY (after the speed change below, on a loaded machine
        // the libvirt job had sometimes copied the small leaf and was READY: the pivot then rightly succeeded)
        await ContractAssert.FailsWithAsync(ErrorCodes.NoSuchJob, () => hypervisor.PivotAsync(vm.Id, chain.Image,
            [chain.LayerOn(Destination, chain.Base), chain.LayerOn(Destination, chain.Middle)]));
        await hypervisor.SetJobSpeedAsync(vm.Id, chain.Image, 2 * CrawlBytesPerSecond);
        Assert.Equal(2 * CrawlBytesPerSecond, (await hypervisor.GetBlockJobAsync(vm.Id, chain.Image))!.SpeedBytesPerSecond);

        var cancelled = await hypervisor.CancelMirrorAsync(vm.Id, chain.Image);

        var onSource = chain.PathsOn(Source, chain.Base, chain.Middle, chain.Leaf);
        Assert.Equal(onSource, cancelled.OpenChain);
        await events.WaitForAsync<BlockJobCancelled>(e => e.Vm == vm.Id && e.Drive == chain.Image);
        Assert.Null(await hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        Assert.Equal(onSource, (await hypervisor.CancelMirrorAsync(vm.Id, chain.Image)).OpenChain);
        Assert.True((await hypervisor.DescribeVmAsync(vm.Id)).Running);

        Assert.All((await Destination.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Equal(Legality.Illegal, v.Legality));
        var removed = await Destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>());
        Assert.Equal(3, removed.Count);
        Assert.Empty(await Destination.ListImagesAsync());
        Assert.All((await Source.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task PostCopy_snapshots_onto_the_destination_then_switches_the_backing_to_the_copy()
    {
        var hypervisor = NewHypervisor();
        var (vm, chain) = await StartVmOnSeededChainAsync(hypervisor);
        var newLeaf = VolumeId.New();
        await Destination.CreateVolumeAsync(
            new NewVolume(chain.Image, newLeaf, VolumeFormat.Cow, chain.Capacity, new VolumeRef(Source.Id, chain.Leaf), Owner: TestOwners.Default), Source);

        var snapshot = await hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, chain.LayerOn(Destination, newLeaf));
        var crossDomain = chain.PathsOn(Source, chain.Base, chain.Middle, chain.Leaf).Append(Destination.Locate(chain.Image, newLeaf)).ToList();
        Assert.Equal(crossDomain, snapshot.OpenChain);
        Assert.Equal(crossDomain, (await hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, chain.LayerOn(Destination, newLeaf))).OpenChain);

        await Destination.CloneImageStructureAsync(Source, chain.Image, TestOwners.Default);
        foreach (var id in chain.Ids) await Destination.CopyVolumeDataAsync(Source, chain.Image, id);
        await Destination.SetParentAsync(chain.Image, newLeaf, new VolumeRef(Destination.Id, chain.Leaf), Destination, rewriteHeader: false);

        var newBacking = chain.Ids.Select(id => chain.LayerOn(Destination, id)).ToList();
        var switched = await hypervisor.SwitchBackingChainAsync(vm.Id, chain.Image, newBacking);

        var onDestination = chain.PathsOn(Destination, chain.Base, chain.Middle, chain.Leaf, newLeaf);
        Assert.Equal(onDestination, switched.OpenChain);
        Assert.Equal(onDestination, (await hypervisor.SwitchBackingChainAsync(vm.Id, chain.Image, newBacking)).OpenChain);
        Assert.Equal(onDestination, (await hypervisor.DescribeVmAsync(vm.Id)).Drive(chain.Image).OpenChain);

        await Source.DeleteImageAsync(chain.Image);
        Assert.True((await hypervisor.DescribeVmAsync(vm.Id)).Running);
        var resolved = await Pool.ResolveChainAsync(Destination.Id, chain.Image);
        Assert.Equal(onDestination, resolved.Layers.Select(l => l.Path));
    }

    [Fact]
    public async Task A_killed_QEMU_is_reported_as_VM_NOT_RUNNING_and_leaves_the_source_intact()
    {
        var hypervisor = NewHypervisor();
        using var events = new HypervisorEventLog(hypervisor);
        var (vm, chain) = await StartVmOnSeededChainAsync(hypervisor);
        await Destination.CloneImageStructureAsync(Source, chain.Image, TestOwners.Default);
        await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, chain.LayerOn(Destination, chain.Leaf), CrawlBytesPerSecond));

        await KillVmProcessAsync(vm);

        await events.WaitForAsync<VmStopped>(e => e.Vm == vm.Id);
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => hypervisor.DescribeVmAsync(vm.Id));
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => hypervisor.PivotAsync(vm.Id, chain.Image,
            [chain.LayerOn(Destination, chain.Base), chain.LayerOn(Destination, chain.Middle)]));
        await ContractAssert.FailsWithAsync(ErrorCodes.VmNotRunning, () => hypervisor.CancelMirrorAsync(vm.Id, chain.Image));

        var source = await Source.DescribeImageAsync(chain.Image);
        Assert.Equal(chain.Ids, source.Volumes.Select(v => v.Id));
        Assert.All(source.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task A_restarted_host_adopts_the_running_vm_and_its_mirror_and_the_pivot_then_works()
    {
        var first = NewHypervisor();
        var (vm, chain) = await StartVmOnSeededChainAsync(first);
        await Destination.CloneImageStructureAsync(Source, chain.Image, TestOwners.Default);
        var job = await first.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, chain.LayerOn(Destination, chain.Leaf)));
        foreach (var id in chain.Internals) await Destination.CopyVolumeDataAsync(Source, chain.Image, id);

        await first.DisposeAsync();
        var restarted = NewHypervisor();
        using var events = new HypervisorEventLog(restarted);
        var adopted = await restarted.AdoptRunningVmsAsync();

        var again = Assert.Single(adopted, v => v.Id == vm.Id);
        Assert.True(again.Running);
        Assert.Equal(vm.Pid, again.Pid);
        Assert.Equal(chain.PathsOn(Source, chain.Base, chain.Middle, chain.Leaf), again.Drive(chain.Image).OpenChain);
        var adoptedJob = again.Drive(chain.Image).Job;
        Assert.NotNull(adoptedJob);
        Assert.Equal(job.JobId, adoptedJob.JobId);

        await WaitReadyAsync(restarted, events, vm.Id, chain.Image);
        var pivoted = await restarted.PivotAsync(vm.Id, chain.Image,
            [chain.LayerOn(Destination, chain.Base), chain.LayerOn(Destination, chain.Middle)]);
        Assert.Equal(chain.PathsOn(Destination, chain.Base, chain.Middle, chain.Leaf), pivoted.OpenChain);
        await events.WaitForAsync<BlockJobCompleted>(e => e.Vm == vm.Id);
    }

    // ---- helpers ----

    private IHypervisor NewHypervisor()
    {
        var hypervisor = CreateHypervisor(Pool);
        _hypervisors.Add(hypervisor);
        return hypervisor;
    }

    private async Task<(VmInfo Vm, SeededChain Chain)> StartVmOnSeededChainAsync(IHypervisor hypervisor)
    {
        var chain = await ChainSeeder.SeedAsync(Source, WriteLayerDataAsync);
        var drive = await Pool.ResolveChainAsync(Source.Id, chain.Image);
        var vm = await hypervisor.StartVmAsync(Spec(VmId.New(), drive));
        return (vm, chain);
    }

    private static VmSpec Spec(VmId id, DriveChain drive) => new(id, $"contract-{id.ToString()[..8]}", [drive]);

    /// <summary>READY as the event says, or as the job already is when the event went out before we listened (a restart).</summary>
    private static async Task WaitReadyAsync(IHypervisor hypervisor, HypervisorEventLog events, VmId vm, ImageId drive)
    {
        var readyEvent = events.WaitForAsync<BlockJobReady>(e => e.Vm == vm && e.Drive == drive);
        var job = await hypervisor.GetBlockJobAsync(vm, drive);
        Assert.NotNull(job);
        if (job.Phase == BlockJobPhase.Ready) return;
        Assert.Equal(BlockJobPhase.Running, job.Phase);
        await readyEvent;
    }
}
