using LiveMigration.Coordinator.Migration;
using LiveMigration.HostNode.Hypervisor;
using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// Issue 3 §3: a node stops in the middle of a migration and the migration still completes. A stall
/// injected into the sim adapters holds the migration at the chosen step while the node stops.
/// </summary>
public sealed class CrashSafetySpecs(ITestOutputHelper output)
{
    [Fact]
    public async Task The_coordinator_running_the_migration_stops_and_the_surviving_coordinator_completes_it()
    {
        await using var bed = new ClusterBed(output);
        var coordinators = new[] { await bed.StartCoordinatorAsync("coordinator-1"), await bed.StartCoordinatorAsync("coordinator-2") };
        await bed.StartHostAsync("host-2", spmCapable: true);
        var vm = await bed.StartVmAsync("host-1", "vm-coordinator-stop");
        var host1 = await bed.StartHostAsync("host-1", spmCapable: false);
        await bed.AwaitAllUpAsync();
        await bed.AwaitInventoryAsync(coordinators[0], [vm.Id]);

        // The mirror stops progressing half-way, so the migration sits in WaitMirrorReady.
        var stall = bed.HypervisorOptions.Faults.StallNext(nameof(IHypervisor.StartMirrorAsync), 0.5);
        try
        {
            var id = await bed.StartMigrationAsync(coordinators[1], ClusterBed.MoveToB(vm, bed.DomainB.Id, MigrationStrategy.PreCopy));
            await bed.AwaitStepAsync(coordinators[1], id, MigrationStep.WaitMirrorReady);
            await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));

            var running = await ClusterBed.RunsMigrationAsync(coordinators[0], id) ? coordinators[0] : coordinators[1];
            var survivor = running == coordinators[0] ? coordinators[1] : coordinators[0];
            Assert.True(await ClusterBed.RunsMigrationAsync(running, id), $"neither coordinator runs migration {id}");
            bed.Log($"{running.Name} runs migration {id}; stopping it");
            await bed.StopNodeAsync(running);
            var stoppedAt = DateTimeOffset.UtcNow;

            // Remember-entities restarts the saga on the survivor without anyone asking for it.
            await Eventually.HoldsAsync($"{survivor.Name} runs migration {id}", () => ClusterBed.RunsMigrationAsync(survivor, id), TimeSpan.FromSeconds(30));
            bed.Log($"{survivor.Name} runs migration {id} {(DateTimeOffset.UtcNow - stoppedAt).TotalMilliseconds:F0} ms after the stop");
            stall.Release();

            var state = await bed.AwaitFinishedAsync(survivor, id);
            Assert.Equal("completed", state.Status);
            await bed.AssertRunsOnAsync(host1, vm, bed.DomainB, bed.DomainA);
        }
        finally
        {
            stall.Release();
        }
    }

    [Fact]
    public async Task The_spm_node_stops_mid_copy_and_the_new_spm_redoes_the_copy()
    {
        await using var bed = new ClusterBed(output);
        var coordinator = await bed.StartCoordinatorAsync("coordinator-1");
        // host-2 is the oldest SPM-capable node, so it holds the SPM singleton; host-1 takes it over.
        var host2 = await bed.StartHostAsync("host-2", spmCapable: true);
        var vm = await bed.StartVmAsync("host-1", "vm-spm-stop");
        var host1 = await bed.StartHostAsync("host-1", spmCapable: true);
        await bed.AwaitAllUpAsync();
        await bed.AwaitInventoryAsync(coordinator, [vm.Id]);

        // The first internal layer's copy stops half-way; the SPM that runs it is then stopped.
        var stall = bed.StorageOptions.Faults.StallNext(nameof(IStorageDomain.CopyVolumeDataAsync), 0.5);
        try
        {
            var id = await bed.StartMigrationAsync(coordinator, ClusterBed.MoveToB(vm, bed.DomainB.Id, MigrationStrategy.PreCopy));
            await stall.Reached.WaitAsync(TimeSpan.FromSeconds(20));
            bed.Log("copy stalled half-way on host-2's SPM; stopping host-2");
            await bed.StopNodeAsync(host2.Node!);

            // The stall is never released: the migration can only complete if host-1's SPM copies again.
            var state = await bed.AwaitFinishedAsync(coordinator, id);
            Assert.Equal("completed", state.Status);
            Assert.False(stall.IsReleased);
            var sync = Assert.Single(state.Disks).Timings.Where(t => t.Step == MigrationStep.SyncInternalVolumes).ToList();
            bed.Log($"SyncInternalVolumes attempts: {string.Join(", ", sync.Select(t => $"#{t.Attempt} {t.Outcome}"))}");
            await bed.AssertRunsOnAsync(host1, vm, bed.DomainB, bed.DomainA);
            var moved = await bed.DomainB.DescribeImageAsync(vm.Image);
            Assert.All(moved.Volumes.Take(2), v => Assert.Equal(ClusterBed.MiB, v.AllocatedBytes));
        }
        finally
        {
            stall.Release();
        }
    }

    [Fact]
    public async Task The_host_running_the_vm_goes_away_and_comes_back_and_the_migration_completes()
    {
        await using var bed = new ClusterBed(output);
        var coordinator = await bed.StartCoordinatorAsync("coordinator-1");
        await bed.StartHostAsync("host-2", spmCapable: true);
        var vm = await bed.StartVmAsync("host-1", "vm-hsm-stop");
        var host1 = await bed.StartHostAsync("host-1", spmCapable: false);
        await bed.AwaitAllUpAsync();
        await bed.AwaitInventoryAsync(coordinator, [vm.Id]);

        var stall = bed.HypervisorOptions.Faults.StallNext(nameof(IHypervisor.StartMirrorAsync), 0.5);
        try
        {
            var id = await bed.StartMigrationAsync(coordinator, ClusterBed.MoveToB(vm, bed.DomainB.Id, MigrationStrategy.PreCopy));
            await bed.AwaitStepAsync(coordinator, id, MigrationStep.WaitMirrorReady);
            await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
            bed.Log("mirror stalled half-way; stopping host-1's HostNode (its QEMU keeps running)");
            await bed.StopNodeAsync(host1.Node!);

            // Unanswered for a few step deadlines while the host is away.
            await Task.Delay(TimeSpan.FromSeconds(3));
            var during = await bed.Service(coordinator).GetAsync(id);
            Assert.False(during!.Finished);

            await bed.StartHostAsync("host-1", spmCapable: false);
            await bed.AwaitAllUpAsync();
            bed.Log("host-1 is back with a new hypervisor adapter that adopted the VM and its mirror");
            stall.Release();

            var state = await bed.AwaitFinishedAsync(coordinator, id);
            Assert.Equal("completed", state.Status);
            await bed.AssertRunsOnAsync(host1, vm, bed.DomainB, bed.DomainA);
        }
        finally
        {
            stall.Release();
        }
    }
}
