using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Tests.Storage.File;

/// <summary>
/// A copied layer's pages leave the page cache once it is proven and durable (<see cref="Posix.DropCachedPages"/>): a hint
/// that changes no byte, and never drops data not yet written out.
/// </summary>
public sealed class PageCacheTests : IDisposable
{
    private readonly TempDomainRoot _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public async Task Dropping_a_files_cached_pages_keeps_every_byte_written_out_or_not()
    {
        var path = Path.Combine(_temp.Root, "data");
        var written = new byte[16 << 20];
        Random.Shared.NextBytes(written);
        await IOFile.WriteAllBytesAsync(path, written);
        Posix.FsyncFile(path);
        Assert.Equal(written, await IOFile.ReadAllBytesAsync(path)); // cached now
        Assert.True(await CachedBytesAsync(path) > 0);

        Posix.DropCachedPages(path);

        Assert.Equal(0, await CachedBytesAsync(path));
        Assert.Equal(written, await IOFile.ReadAllBytesAsync(path));

        // not written out yet: the dirty pages stay, and so does the data
        Random.Shared.NextBytes(written);
        await using (var stream = new FileStream(path, FileMode.Open, FileAccess.Write)) await stream.WriteAsync(written);
        Posix.DropCachedPages(path);
        Assert.Equal(written, await IOFile.ReadAllBytesAsync(path));
    }

    [Fact]
    public async Task A_copied_layer_leaves_neither_its_copy_nor_its_source_in_the_page_cache()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await TempDomainRoot.ThreeVolumeChainAsync(source);
        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        foreach (var volume in volumes) Posix.FsyncFile(source.Locate(image, volume)); // written out: its pages are clean, so they can go

        var copied = await destination.CopyVolumeDataAsync(source, image, volumes[0]);

        Assert.Equal(Legality.Legal, copied.Legality);
        Assert.Equal(0, await CachedBytesAsync(destination.Locate(image, volumes[0])));
        Assert.Equal(0, await CachedBytesAsync(source.Locate(image, volumes[0])));
    }

    /// <summary>What fincore(1) finds of the file in the page cache.</summary>
    private static async Task<long> CachedBytesAsync(string path)
    {
        var output = await ProcessRunner.RunCheckedAsync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], ErrorCodes.IoError);
        return long.Parse(output.Trim());
    }
}
