using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.Json;
using LiveMigration.HostNode.Hypervisor.Qmp;
using LiveMigration.Shared.Model;
using Xunit.Abstractions;
using static LiveMigration.HostNode.Tests.Hypervisor.Qmp.QemuTestBed;

namespace LiveMigration.HostNode.Tests.Hypervisor.Qmp;

public sealed class QmpHypervisorTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan EventTimeout = TimeSpan.FromSeconds(30);
    private readonly QemuTestBed _bed = new();

    public Task InitializeAsync() => Task.CompletedTask;
    public async Task DisposeAsync() => await _bed.DisposeAsync();

    private async Task<(QmpHypervisor Hypervisor, VmInfo Vm, DriveChain Chain)> StartVmAsync(long capacity = 32 * MiB, long leafDataMiB = 0)
    {
        var chain = await _bed.CreateChainAsync(3, capacity, leafDataMiB);
        var hypervisor = _bed.NewHypervisor();
        var vm = await hypervisor.StartVmAsync(new VmSpec(VmId.New(), "vm-" + Guid.NewGuid().ToString("N")[..6], [chain]));
        _bed.Track(vm);
        return (hypervisor, vm, chain);
    }

    /// <summary>A repeated call must leave the drive as the first one did (records hold lists, so compare by content).</summary>
    /// <summary>A repeated call answers the drive's same state, and says it switched nothing this time.</summary>
    private static void AssertSameState(DriveState expected, DriveState actual)
    {
        Assert.Equal(expected.OpenChain, actual.OpenChain);
        Assert.Null(actual.SwitchDuration);
        Assert.Equal(expected with { OpenChain = [], SwitchDuration = null }, actual with { OpenChain = [] });
    }

    /// <summary>A switch the call made carries the adapter's own timing of it, within the whole call's.</summary>
    private static void AssertTimedSwitch(DriveState switched, TimeSpan wholeCall)
    {
        Assert.NotNull(switched.SwitchDuration);
        Assert.InRange(switched.SwitchDuration.Value, TimeSpan.Zero, wholeCall);
    }

    [Fact]
    public async Task Starts_a_vm_on_a_three_layer_chain_exported_over_nbd_and_stops_it()
    {
        var (hypervisor, vm, chain) = await StartVmAsync();

        Assert.True(hypervisor.SocketDirectory.Length < 40, hypervisor.SocketDirectory);
        Assert.True(vm.Running);
        var drive = vm.Drive(chain.Image);
        Assert.Equal(chain.Layers.Select(l => l.Path), drive.OpenChain);
        Assert.Equal(chain.Image.ToString(), drive.ExportName);
        Assert.True(File.Exists(drive.GuestSocket), drive.GuestSocket);
        await GuestIo(drive, $"read -P 0x22 {MiB} {MiB}"); // fails unless the guest sees the middle layer's data
        Assert.Null(drive.Job);
        var manifestPath = Path.Combine(_bed.RunDirectory, "vms", $"{vm.Id}.json");
        using (var manifest = JsonDocument.Parse(await File.ReadAllTextAsync(manifestPath)))
            Assert.Equal(vm.Pid, manifest.RootElement.GetProperty("Pid").GetInt32());

        var again = await hypervisor.StartVmAsync(new VmSpec(vm.Id, vm.Name, [chain]));
        Assert.Equal(vm.Pid, again.Pid);

        await hypervisor.StopVmAsync(vm.Id);
        Assert.False(IsRunning(vm.Pid!.Value));
        Assert.False(File.Exists(manifestPath));
        await _bed.WaitForEventAsync<VmStopped>(e => e.Vm == vm.Id, EventTimeout);
        await hypervisor.StopVmAsync(vm.Id);
        var missing = await Assert.ThrowsAsync<OperationFailedException>(() => hypervisor.DescribeVmAsync(vm.Id));
        Assert.Equal(ErrorCodes.VmNotFound, missing.Code);
    }

    [Fact]
    public async Task Pre_copy_mirrors_the_leaf_and_pivots_onto_the_destination_chain()
    {
        var (hypervisor, vm, chain) = await StartVmAsync(capacity: 128 * MiB, leafDataMiB: 64);
        var destinationBacking = await _bed.CopyBackingToAsync(_bed.DomainB, chain);
        var destinationLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, chain.Leaf.Volume.Volume, destinationBacking[^1], 128 * MiB);

        var mirrorWatch = Stopwatch.StartNew();
        var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf, 0, CopyMode.WriteBlocking));
        await _bed.WaitForEventAsync<BlockJobReady>(e => e.Vm == vm.Id, EventTimeout);
        var mirrorTime = mirrorWatch.Elapsed;
        var repeated = await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf));
        Assert.Equal((job.JobId, BlockJobPhase.Ready), (repeated.JobId, repeated.Phase));
        var ready = await hypervisor.GetBlockJobAsync(vm.Id, chain.Image);
        Assert.Equal(BlockJobPhase.Ready, ready!.Phase);
        Assert.Equal(ready.Length, ready.Offset);

        // The guest writes after READY: the mirror must carry it across.
        var drive = vm.Drive(chain.Image);
        await GuestIo(drive, $"write -P 0x77 {4 * MiB} {MiB}");

        var pivotWatch = Stopwatch.StartNew();
        var pivoted = await hypervisor.PivotAsync(vm.Id, chain.Image, destinationBacking);
        var pivotCall = pivotWatch.Elapsed;
        await _bed.WaitForEventAsync<BlockJobCompleted>(e => e.Vm == vm.Id, EventTimeout);

        Assert.Equal(destinationBacking.Append(destinationLeaf).Select(l => l.Path), pivoted.OpenChain);
        Assert.Null(pivoted.Job);
        var sourceFolder = Path.GetDirectoryName(chain.Leaf.Path)!;
        Assert.DoesNotContain(OpenFiles(vm.Pid!.Value), f => f.StartsWith(sourceFolder, StringComparison.Ordinal));
        AssertSameState(pivoted, await hypervisor.PivotAsync(vm.Id, chain.Image, destinationBacking));
        await GuestIo(pivoted, $"read -P 0x77 {4 * MiB} {MiB}");
        await GuestIo(pivoted, $"write -P 0x78 {5 * MiB} {MiB}");
        var pivotTime = hypervisor.LastPivotDuration(vm.Id);
        Assert.NotNull(pivotTime);
        AssertTimedSwitch(pivoted, pivotCall);
        Assert.Equal(pivotTime, pivoted.SwitchDuration);

        await hypervisor.StopVmAsync(vm.Id);
        // The source never saw the write after the pivot; everything before it is on both.
        await QemuIo(destinationLeaf, $"read -P 0x78 {5 * MiB} {MiB}");
        await QemuIo(chain.Leaf, $"write -P 0x78 {5 * MiB} {MiB}");
        Assert.Contains("identical", await QemuImg("compare", "-f", "qcow2", "-F", "qcow2", chain.Leaf.Path, destinationLeaf.Path));
        output.WriteLine($"mirror of a 64 MiB leaf: start→READY {mirrorTime.TotalMilliseconds:0} ms; " +
                         $"pivot: block-job-complete→COMPLETED {pivotTime.Value.TotalMilliseconds:0.0} ms, whole PivotAsync {pivotCall.TotalMilliseconds:0} ms");
    }

    [Fact]
    public async Task A_description_while_the_pivot_closes_the_source_names_a_whole_chain_from_the_node_graph_alone()
    {
        var (hypervisor, vm, chain) = await StartVmAsync(capacity: 64 * MiB, leafDataMiB: 8);
        var destinationBacking = await _bed.CopyBackingToAsync(_bed.DomainB, chain);
        var destinationLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, chain.Leaf.Volume.Volume, destinationBacking[^1], 64 * MiB);
        await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf));
        await _bed.WaitForEventAsync<BlockJobReady>(e => e.Vm == vm.Id, EventTimeout);

        // As the host does: the mirror's end announced, it describes the VM at once, while the pivot still closes the
        // source and has not yet named the destination's layers in the VM's manifest.
        var described = new ConcurrentQueue<Task<VmInfo>>();
        hypervisor.EventRaised += e =>
        {
            if (e is BlockJobCompleted && e.Vm == vm.Id) described.Enqueue(hypervisor.DescribeVmAsync(vm.Id));
        };
        await hypervisor.PivotAsync(vm.Id, chain.Image, destinationBacking);

        var source = chain.Layers.Select(l => l.Path).ToList();
        var destination = destinationBacking.Append(destinationLeaf).Select(l => l.Path).ToList();
        var open = Assert.Single(await Task.WhenAll(described)).Drive(chain.Image).OpenChain;
        Assert.True(open.SequenceEqual(destination) || open.SequenceEqual(source), $"a whole chain, not: {string.Join(", ", open)}");
        // the full node description holds every guest request for as long as it takes (16–28 ms for 14-layer chains here)
        Assert.Equal(0, hypervisor.FullNodeDescriptions);
    }

    [Fact]
    public async Task Cancel_leaves_the_drive_on_its_source_and_closes_the_destination_leaf()
    {
        var (hypervisor, vm, chain) = await StartVmAsync(leafDataMiB: 16);
        var destinationBacking = await _bed.CopyBackingToAsync(_bed.DomainB, chain);
        var destinationLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, chain.Leaf.Volume.Volume, destinationBacking[^1], 32 * MiB);

        var job = await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf, 1 * MiB));
        Assert.Equal(BlockJobPhase.Running, job.Phase);
        Assert.Equal(1 * MiB, job.SpeedBytesPerSecond);
        await hypervisor.SetJobSpeedAsync(vm.Id, chain.Image, 2 * MiB);
        Assert.Equal(2 * MiB, (await hypervisor.GetBlockJobAsync(vm.Id, chain.Image))!.SpeedBytesPerSecond);
        Assert.Contains(destinationLeaf.Path, OpenFiles(vm.Pid!.Value));

        var state = await hypervisor.CancelMirrorAsync(vm.Id, chain.Image);

        await _bed.WaitForEventAsync<BlockJobCancelled>(e => e.Vm == vm.Id, EventTimeout);
        Assert.Equal(chain.Layers.Select(l => l.Path), state.OpenChain);
        Assert.Null(state.Job);
        Assert.Null(await hypervisor.GetBlockJobAsync(vm.Id, chain.Image));
        Assert.DoesNotContain(destinationLeaf.Path, OpenFiles(vm.Pid.Value));
        AssertSameState(state, await hypervisor.CancelMirrorAsync(vm.Id, chain.Image));
        var noJob = await Assert.ThrowsAsync<OperationFailedException>(() => hypervisor.SetJobSpeedAsync(vm.Id, chain.Image, 0));
        Assert.Equal(ErrorCodes.NoSuchJob, noJob.Code);
    }

    [Fact]
    public async Task Post_copy_snapshots_onto_the_destination_then_switches_the_backing_to_the_copy()
    {
        var (hypervisor, vm, chain) = await StartVmAsync();
        var newLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, VolumeId.New(), chain.Leaf, 32 * MiB);

        var snapshotWatch = Stopwatch.StartNew();
        var snapshotted = await hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, newLeaf);
        var snapshotTime = snapshotWatch.Elapsed;
        Assert.Equal(chain.Layers.Append(newLeaf).Select(l => l.Path), snapshotted.OpenChain);
        AssertTimedSwitch(snapshotted, snapshotTime);
        AssertSameState(snapshotted, await hypervisor.LiveSnapshotAsync(vm.Id, chain.Image, newLeaf));
        await GuestIo(snapshotted, $"write -P 0x66 {5 * MiB} {MiB}");

        // What the SPM does meanwhile: the whole old chain copied to B (the leaf is read-only in QEMU now).
        var copiedBacking = await _bed.CopyBackingToAsync(_bed.DomainB, new DriveChain(chain.Image, chain.Layers.Append(newLeaf).ToList()));
        var switchWatch = Stopwatch.StartNew();
        var switched = await hypervisor.SwitchBackingChainAsync(vm.Id, chain.Image, copiedBacking);
        var switchTime = switchWatch.Elapsed;

        Assert.Equal(copiedBacking.Append(newLeaf).Select(l => l.Path), switched.OpenChain);
        AssertTimedSwitch(switched, switchTime);
        var sourceFolder = Path.GetDirectoryName(chain.Leaf.Path)!;
        Assert.DoesNotContain(OpenFiles(vm.Pid!.Value), f => f.StartsWith(sourceFolder, StringComparison.Ordinal));
        using (var info = JsonDocument.Parse(await QemuImg("info", "-U", "--output=json", newLeaf.Path)))
            Assert.Equal(copiedBacking[^1].Path, info.RootElement.GetProperty("full-backing-filename").GetString());
        AssertSameState(switched, await hypervisor.SwitchBackingChainAsync(vm.Id, chain.Image, copiedBacking));
        await GuestIo(switched, $"read -P 0x11 0 {MiB}");
        await GuestIo(switched, $"read -P 0x33 {2 * MiB} {MiB}");
        await GuestIo(switched, $"read -P 0x66 {5 * MiB} {MiB}");

        await hypervisor.StopVmAsync(vm.Id);
        await QemuIo(newLeaf, $"read -P 0x22 {MiB} {MiB}");
        output.WriteLine($"post-copy: live snapshot {snapshotTime.TotalMilliseconds:0.0} ms, backing switch {switchTime.TotalMilliseconds:0.0} ms");
    }

    [Fact]
    public async Task A_killed_qemu_is_reported_as_vm_not_running_and_forgotten_by_the_next_adopter()
    {
        var (hypervisor, vm, chain) = await StartVmAsync(leafDataMiB: 8);
        var destinationLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, chain.Leaf.Volume.Volume, chain.Backing[^1], 32 * MiB);
        await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf, 1 * MiB));

        await KillAsync(vm.Pid!.Value);

        var stopped = await _bed.WaitForEventAsync<VmStopped>(e => e.Vm == vm.Id, EventTimeout);
        Assert.Contains(vm.Pid.Value.ToString(), stopped.Reason);
        foreach (var call in new Func<Task>[]
                 {
                     () => hypervisor.DescribeVmAsync(vm.Id),
                     () => hypervisor.GetBlockJobAsync(vm.Id, chain.Image),
                     () => hypervisor.PivotAsync(vm.Id, chain.Image, chain.Backing),
                     () => hypervisor.CancelMirrorAsync(vm.Id, chain.Image),
                 })
        {
            var error = await Assert.ThrowsAsync<OperationFailedException>(call);
            Assert.Equal(ErrorCodes.VmNotRunning, error.Code);
        }
        var unknown = await Assert.ThrowsAsync<OperationFailedException>(() => hypervisor.DescribeVmAsync(VmId.New()));
        Assert.Equal(ErrorCodes.VmNotFound, unknown.Code);
        // The source chain is intact.
        await QemuImg("check", chain.Leaf.Path);

        await hypervisor.DisposeAsync();
        await using var successor = _bed.NewHypervisor();
        Assert.Empty(await successor.AdoptRunningVmsAsync());
        Assert.False(File.Exists(Path.Combine(_bed.RunDirectory, "vms", $"{vm.Id}.json")));
    }

    [Fact]
    public async Task A_vm_whose_qemu_and_socket_folder_are_gone_is_forgotten_by_the_next_adopter_without_an_error()
    {
        var (hypervisor, vm, _) = await StartVmAsync();
        var manifest = Path.Combine(_bed.RunDirectory, "vms", $"{vm.Id}.json");
        var qmpSocket = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(manifest)).RootElement.GetProperty("QmpSocket").GetString()!;
        await hypervisor.DisposeAsync();
        await KillAsync(vm.Pid!.Value);
        // what lsm local down leaves: the VM stopped and its socket folder removed, the manifest still in the run directory
        Directory.Delete(Path.GetDirectoryName(qmpSocket)!, recursive: true);

        await using var successor = _bed.NewHypervisor();
        Assert.Empty(await successor.AdoptRunningVmsAsync());
        Assert.False(File.Exists(manifest));
    }

    [Fact]
    public async Task A_new_instance_adopts_the_running_vm_and_its_mirror_then_pivots()
    {
        var (hypervisor, vm, chain) = await StartVmAsync(leafDataMiB: 8);
        var destinationBacking = await _bed.CopyBackingToAsync(_bed.DomainB, chain);
        var destinationLeaf = await _bed.CreateLeafAsync(_bed.DomainB, chain.Image, chain.Leaf.Volume.Volume, destinationBacking[^1], 32 * MiB);
        await hypervisor.StartMirrorAsync(new MirrorRequest(vm.Id, chain.Image, destinationLeaf, 1 * MiB));

        await hypervisor.DisposeAsync(); // the host process "restarts": connections close, QEMU runs on
        Assert.True(IsRunning(vm.Pid!.Value));
        var successor = _bed.NewHypervisor();
        var adopted = Assert.Single(await successor.AdoptRunningVmsAsync());

        Assert.Equal(vm.Id, adopted.Id);
        Assert.Equal(vm.Pid, adopted.Pid);
        var job = adopted.Drive(chain.Image).Job;
        Assert.NotNull(job);
        Assert.Equal(BlockJobPhase.Running, job.Phase);
        await successor.SetJobSpeedAsync(vm.Id, chain.Image, 0);
        await _bed.WaitForEventAsync<BlockJobReady>(e => e.Vm == vm.Id, EventTimeout);
        var pivoted = await successor.PivotAsync(vm.Id, chain.Image, destinationBacking);

        Assert.Equal(destinationBacking.Append(destinationLeaf).Select(l => l.Path), pivoted.OpenChain);
        await GuestIo(pivoted, $"read -P 0x5a {8 * MiB} {8 * MiB}");
    }

    [Fact]
    public async Task A_running_vm_whose_monitor_does_not_answer_is_not_adopted_but_said_to_run_and_the_others_are_adopted()
    {
        var (hypervisor, vm, _) = await StartVmAsync();
        var manifest = Path.Combine(_bed.RunDirectory, "vms", $"{vm.Id}.json");
        var qmpSocket = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(manifest)).RootElement.GetProperty("QmpSocket").GetString()!;
        await hypervisor.DisposeAsync(); // the host process "restarts": QEMU runs on
        // another client holds the monitor (QEMU serves one at a time): the next instance cannot talk to this VM
        using var holder = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        await holder.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(qmpSocket));

        await using var successor = _bed.NewHypervisor();
        Assert.Empty(await successor.AdoptRunningVmsAsync());
        Assert.True(IsRunning(vm.Pid!.Value));
        Assert.True(await successor.RunsUnadoptedAsync(vm.Id), "a live QEMU that was not adopted must not be taken for stopped");
        Assert.False(await successor.RunsUnadoptedAsync(VmId.New()));

        holder.Close(); // the monitor is free again: the next adoption takes it, and it is listed, no longer "unadopted"
        var adopted = Assert.Single(await successor.AdoptRunningVmsAsync());
        Assert.Equal(vm.Id, adopted.Id);
        Assert.False(await successor.RunsUnadoptedAsync(vm.Id));
    }
}
