using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Storage.File;

/// <summary>
/// Guest disks and their metadata are the owner's and QEMU's group's (0660), folders 0750: never readable by other users,
/// whatever umask the process runs with (this test runner's is the usual 022).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class StorageModesTests : IDisposable
{
    private readonly TempDomainRoot _root = new();

    public void Dispose() => _root.Dispose();

    [Fact]
    public async Task Volumes_metadata_and_folders_of_a_made_and_a_copied_chain_are_closed_to_other_users()
    {
        var source = await _root.NewDomainAsync("source");
        var destination = await _root.NewDomainAsync("destination");
        var (image, volumes) = await SampleImage.CreateThreeVolumeChainAsync(source, SampleImageLayout.Small);
        await destination.CloneImageStructureAsync(source, image, new VolumeOwner(MigrationId.New(), 0));
        foreach (var volume in volumes.SkipLast(1)) await destination.CopyVolumeDataAsync(source, image, volume);
        await destination.MarkMigrationAsync(MigrationId.New(), ImageId.New(), LiveMigration.HostNode.Storage.MigrationMark.Ended);

        foreach (var domain in new[] { source, destination })
        {
            var modes = AssertModes(domain.DomainPath);
            Assert.Contains(modes, m => m.Path.EndsWith(".meta", StringComparison.Ordinal));
            Assert.Contains(modes, m => m.Path.EndsWith("metadata", StringComparison.Ordinal));
        }
    }

    /// <summary>Every file 0660 and every folder 0750 under (and including) <paramref name="folder"/>; returns what it checked.</summary>
    public static IReadOnlyList<(string Path, UnixFileMode Mode)> AssertModes(string folder)
    {
        var checkedEntries = new List<(string, UnixFileMode)> { (folder, System.IO.File.GetUnixFileMode(folder)) };
        Assert.True(StorageModes.Folder == System.IO.File.GetUnixFileMode(folder), $"{folder}: {System.IO.File.GetUnixFileMode(folder)}");
        foreach (var entry in Directory.EnumerateFileSystemEntries(folder, "*", SearchOption.AllDirectories))
        {
            var mode = System.IO.File.GetUnixFileMode(entry);
            var expected = Directory.Exists(entry) ? StorageModes.Folder : StorageModes.File;
            Assert.True(expected == mode, $"{entry} is {Octal(mode)}, expected {Octal(expected)}");
            checkedEntries.Add((entry, mode));
        }
        return checkedEntries;
    }

    private static string Octal(UnixFileMode mode) => Convert.ToString((int)mode, 8);
}
