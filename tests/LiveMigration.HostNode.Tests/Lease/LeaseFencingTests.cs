using Akka.Actor;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Actors;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Sim;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Lease;

/// <summary>DESIGN §7 invariant 6 with the (not yet wired) SPM lease: a stale SPM changes nothing, and what an SPM makes carries its generation.</summary>
public sealed class LeaseFencingTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private static readonly TimeSpan Period = TimeSpan.FromMilliseconds(600);
    private static readonly TimeSpan Margin = TimeSpan.FromMilliseconds(200);
    private readonly string _folder = Path.Combine(Path.GetTempPath(), $"lsm-fence-{Guid.NewGuid():N}");
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", 4L << 30);
    private SeededChain _chain = null!;

    private string LeasePath => Path.Combine(_folder, "spm.lease");

    public async Task InitializeAsync() =>
        _chain = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));

    public Task DisposeAsync()
    {
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
        return Task.CompletedTask;
    }

    /// <summary>An SPM as a host holding <paramref name="lease"/> would run it: its pool's domains fenced by the lease.</summary>
    private IActorRef Spm(PoolLease lease) =>
        Sys.ActorOf(SpmActor.Props(new StoragePool([new FencedStorageDomain(_a, lease), new FencedStorageDomain(_b, lease)]), lease));

    [Fact]
    public async Task A_stale_SPM_is_refused_FENCED_and_changes_nothing_while_the_new_one_carries_its_generation()
    {
        await using var first = new PoolLease(LeasePath, "host-a", Period, Margin);
        await using var second = new PoolLease(LeasePath, "host-b", Period, Margin);
        Assert.True(await first.TryAcquireAsync());
        var (staleSpm, saga) = (Spm(first), CreateTestProbe());
        var migration = new StepDriver(VmId.New(), new DiskPlan(_chain.Image, _a.Id, _b.Id, 10 << 20, VolumeId.New()), MigrationStrategy.PreCopy);
        await migration.SucceedAsync(staleSpm, Step.CloneImageStructure, saga);
        Assert.All((await _b.DescribeImageAsync(_chain.Image)).Volumes, v => Assert.Equal(1, v.Owner!.Generation));

        first.StopRenewing(); // the first SPM's host pauses; another host takes the lease
        Assert.True(await second.TryAcquireAsync());
        var before = (await _b.DescribeImageAsync(_chain.Image)).Volumes;

        var fenced = Assert.IsType<OperationFailed>(await migration.RunAsync(staleSpm, Step.SyncInternalVolumes, saga));
        Assert.Equal((ErrorCodes.Fenced, true), (fenced.Code, fenced.Transient));
        var rollback = Assert.IsType<OperationFailed>(await migration.RunAsync(staleSpm, Step.DeleteDestinationImage, saga));
        Assert.Equal(ErrorCodes.Fenced, rollback.Code);
        Assert.Equal(before, (await _b.DescribeImageAsync(_chain.Image)).Volumes);

        // The new SPM goes on; a stale generation's volumes are the same migration's, so it may.
        await migration.SucceedAsync(Spm(second), Step.SyncInternalVolumes, saga, attempt: 2);
        Assert.Equal(2, second.Generation);
    }

    [Fact]
    public async Task A_fenced_domain_refuses_every_change_once_the_lease_moved_but_still_reads()
    {
        await using var first = new PoolLease(LeasePath, "host-a", Period, Margin);
        await using var second = new PoolLease(LeasePath, "host-b", Period, Margin);
        Assert.True(await first.TryAcquireAsync());
        var fenced = new FencedStorageDomain(_b, first);
        var source = new FencedStorageDomain(_a, first);
        await fenced.CloneImageStructureAsync(source, _chain.Image, TestOwners.Default);

        first.StopRenewing();
        Assert.True(await second.TryAcquireAsync());

        await ContractAssert.FailsWithAsync(ErrorCodes.Fenced, () => fenced.CopyVolumeDataAsync(source, _chain.Image, _chain.Base));
        await ContractAssert.FailsWithAsync(ErrorCodes.Fenced, () => fenced.DeleteOwnedVolumesAsync(_chain.Image, TestOwners.Default));
        await ContractAssert.FailsWithAsync(ErrorCodes.Fenced, () => source.DeleteImageAsync(_chain.Image));
        await ContractAssert.FailsWithAsync(ErrorCodes.Fenced, () => fenced.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
        Assert.Equal(3, (await fenced.DescribeImageAsync(_chain.Image)).Volumes.Count);
        Assert.Equal(3, (await source.DescribeImageAsync(_chain.Image)).Volumes.Count);
    }

    [Fact]
    public async Task A_fenced_change_keeps_the_lease_from_being_given_up_until_it_ended_however_it_ends()
    {
        await using var lease = new PoolLease(LeasePath, "host-a", Period, Margin);
        Assert.True(await lease.TryAcquireAsync());
        var fenced = new FencedStorageDomain(_b, lease);
        var source = new FencedStorageDomain(_a, lease);
        await fenced.CloneImageStructureAsync(source, _chain.Image, TestOwners.Default);
        Assert.Equal(0, lease.ChangesInProgress);

        // A copy paced to take minutes, stopped by its SPM (cancelled) only after the release began.
        using var stop = new CancellationTokenSource();
        var copy = fenced.CopyVolumeDataAsync(source, _chain.Image, _chain.Base, ct: stop.Token, rate: new CopyRate(16 * 1024));
        while (lease.ChangesInProgress == 0 && !copy.IsCompleted) await Task.Delay(10);
        Assert.Equal(1, lease.ChangesInProgress);
        var release = lease.ReleaseAsync();
        await ContractAssert.FailsWithAsync(ErrorCodes.Fenced, () => fenced.DeleteOwnedVolumesAsync(_chain.Image, TestOwners.Default));
        var kept = await lease.ReadAsync();
        await Task.Delay(Period);
        Assert.False(release.IsCompleted);
        var later = await lease.ReadAsync();
        Assert.Equal(("host-a", kept.Generation), (later.Holder, later.Generation));
        Assert.True(later.Renewal > kept.Renewal, "still renewed while the change runs, or another host could take it over");

        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => copy);
        await release;
        Assert.Equal(0, lease.ChangesInProgress);
        Assert.True((await lease.ReadAsync()).IsFree);
    }
}
