using Akka.Actor;
using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Steps;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.Sim;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using Step = LiveMigration.Shared.Migration.MigrationStep;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>
/// Issue "Trust", observation 7: room on the destination is checked on fresh figures and promised before the point of
/// no return. Two post-copies into a domain with room for one: the second is refused at CreateVolumeCrossDomain (before
/// any live snapshot could move its guest's writes there), with nothing made; once the first's copy is undone, the
/// second fits.
/// </summary>
public sealed class SpmSpaceReservationTests : Akka.TestKit.Xunit2.TestKit, IAsyncLifetime
{
    private const long MiB = 1L << 20;
    private readonly SimStorageDomain _a = new(DomainId.New(), "a", 4L << 30);
    // Room for one post-copy (its chain's few MiB and the guest's headroom), not two.
    private readonly SimStorageDomain _b = new(DomainId.New(), "b", StorageSteps.PostCopyHeadroomBytes + 32 * MiB);
    private readonly StoragePool _pool;
    private SeededChain _first = null!, _second = null!;

    public SpmSpaceReservationTests() => _pool = new StoragePool([_a, _b]);

    public async Task InitializeAsync()
    {
        _first = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        _second = await ChainSeeder.SeedAsync(_a, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
    }

    public Task DisposeAsync() => Task.CompletedTask;

    private StepDriver PostCopy(SeededChain chain) =>
        new(VmId.New(), new DiskPlan(chain.Image, _a.Id, _b.Id, 10 * MiB, VolumeId.New()), MigrationStrategy.PostCopy);

    [Fact]
    public async Task A_post_copy_that_would_overfill_the_destination_is_refused_before_its_live_snapshot_and_fits_once_room_is_released()
    {
        var spm = Sys.ActorOf(SpmActor.Props(_pool));
        var saga = CreateTestProbe();
        var first = PostCopy(_first);
        var second = PostCopy(_second);

        await first.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga);
        var refused = Assert.IsType<OperationFailed>(await second.RunAsync(spm, Step.CreateVolumeCrossDomain, saga));
        Assert.Equal(ErrorCodes.NotEnoughSpace, refused.Code);
        Assert.False(refused.Transient);
        Assert.Contains("promised to other migrations", refused.Message);
        Assert.DoesNotContain(_second.Image, await _b.ListImagesAsync());

        // The first one's rollback releases its promise: the second fits now.
        await first.SucceedAsync(spm, Step.DeleteDestinationImage, saga);
        await second.SucceedAsync(spm, Step.CreateVolumeCrossDomain, saga, attempt: 2);
        Assert.Contains(_second.Image, await _b.ListImagesAsync());
    }
}
