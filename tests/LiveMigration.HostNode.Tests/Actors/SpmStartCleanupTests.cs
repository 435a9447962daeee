using LiveMigration.HostNode.Spm;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Tests.Storage.File;

namespace LiveMigration.HostNode.Tests.Actors;

/// <summary>
/// A delete cut short after its rename (the SPM's host died between renaming an image folder away and unlinking its files)
/// leaves a folder no reader lists but whose files still take the domain's space: the next SPM finishes it as it starts,
/// and touches nothing else (an image, a half-made twin of a running migration).
/// </summary>
public sealed class SpmStartCleanupTests : Akka.TestKit.Xunit2.TestKit, IDisposable
{
    private readonly TempDomainRoot _temp = new();

    [Fact]
    public async Task A_starting_SPM_finishes_the_deletes_a_crash_interrupted_and_leaves_every_image_as_it_was()
    {
        var domain = await _temp.NewDomainAsync("a");
        var (kept, _) = await TempDomainRoot.ThreeVolumeChainAsync(domain);
        var (cut, _) = await TempDomainRoot.ThreeVolumeChainAsync(domain);
        var images = Path.Combine(domain.DomainPath, "images");
        var usedWithBoth = (await domain.DescribeAsync()).UsedBytes;
        // what the crash left: the image renamed away (gone for every reader), its files still there
        Directory.Move(Path.Combine(images, cut.ToString()), Path.Combine(images, $"_remove_me_{cut}_{Guid.NewGuid():N}"));
        Assert.Equal([kept], await domain.ListImagesAsync());
        Assert.Equal(usedWithBoth, (await domain.DescribeAsync()).UsedBytes);

        Sys.ActorOf(SpmActor.Props(new StoragePool([domain])));

        await AwaitAssertAsync(() => Assert.Equal([Path.Combine(images, kept.ToString())], Directory.EnumerateDirectories(images)),
            TimeSpan.FromSeconds(20), TimeSpan.FromMilliseconds(100));
        Assert.True((await domain.DescribeAsync()).UsedBytes < usedWithBoth);
        Assert.Equal(3, (await domain.DescribeImageAsync(kept)).Volumes.Count);
    }

    void IDisposable.Dispose()
    {
        Dispose(); // the actor system first: nothing of it touches the folder as it goes
        _temp.Dispose();
    }
}
