using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using Xunit.Abstractions;

namespace LiveMigration.Cluster.Specs.InProcess;

/// <summary>
/// A Coordinator node and two HostNodes (host-1 runs the VM, host-2 holds the SPM) in one process: a VM's
/// disk moves from domain A to domain B through the real sharded saga, the SPM singleton and host-1's HSM.
/// </summary>
public sealed class EndToEndSpecs(ITestOutputHelper output)
{
    [Theory]
    [InlineData(MigrationStrategy.PreCopy)]
    [InlineData(MigrationStrategy.PostCopy)]
    public async Task A_migration_completes_end_to_end_and_the_drive_runs_on_the_destination(MigrationStrategy strategy)
    {
        await using var bed = new ClusterBed(output);
        var coordinator = await bed.StartCoordinatorAsync("coordinator-1");
        await bed.StartHostAsync("host-2", spmCapable: true);
        var vm = await bed.StartVmAsync("host-1", "vm-e2e");
        var host1 = await bed.StartHostAsync("host-1", spmCapable: false);
        await bed.AwaitAllUpAsync();
        await bed.AwaitInventoryAsync(coordinator, [vm.Id]);

        var started = DateTimeOffset.UtcNow;
        var id = await bed.StartMigrationAsync(coordinator, ClusterBed.MoveToB(vm, bed.DomainB.Id, strategy));
        var state = await bed.AwaitFinishedAsync(coordinator, id);
        bed.Log($"{strategy} took {(DateTimeOffset.UtcNow - started).TotalMilliseconds:F0} ms end to end");

        Assert.Equal("completed", state.Status);
        var disk = Assert.Single(state.Disks);
        Assert.Equal(nameof(DiskPhase.Completed), disk.Phase);
        Assert.Equal(MigrationPlan.ForwardSteps(strategy, deleteSource: true), disk.Timings.Select(t => t.Step).Distinct().ToList());
        await bed.AssertRunsOnAsync(host1, vm, bed.DomainB, bed.DomainA);
    }
}
