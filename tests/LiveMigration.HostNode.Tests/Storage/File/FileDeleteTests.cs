using LiveMigration.HostNode.Migration;
using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Tests.EndToEnd;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;
using static LiveMigration.HostNode.Tests.Storage.File.TempDomainRoot;

namespace LiveMigration.HostNode.Tests.Storage.File;

/// <summary>A size-limited tmpfs mounted for one test (the tests run as root), unmounted on dispose.</summary>
public sealed class Tmpfs : IAsyncDisposable
{
    public string Path { get; } = System.IO.Path.Combine("/tmp", $"lsm-tmpfs-{Guid.NewGuid():N}"[..20]);

    public static async Task<Tmpfs> MountAsync(long sizeBytes)
    {
        var tmpfs = new Tmpfs();
        Directory.CreateDirectory(tmpfs.Path);
        await ProcessRunner.RunCheckedAsync("mount", ["-t", "tmpfs", "-o", $"size={sizeBytes}", "tmpfs", tmpfs.Path], ErrorCodes.IoError);
        return tmpfs;
    }

    /// <summary>Writes a file until the file system refuses even 4 KiB more.</summary>
    public void Fill()
    {
        using var stream = new FileStream(System.IO.Path.Combine(Path, "filler"), FileMode.Create, FileAccess.Write);
        foreach (var chunk in new[] { 1 << 20, 64 << 10, 4 << 10 })
        {
            var bytes = new byte[chunk];
            Array.Fill(bytes, (byte)0x5a);
            try
            {
                while (true)
                {
                    stream.Write(bytes);
                    stream.Flush(flushToDisk: true);
                }
            }
            catch (IOException)
            {
                // full at this chunk size; try a smaller one
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (await TestMounts.UnmountAsync(Path)) Directory.Delete(Path);
    }
}

/// <summary>Unmounting what a test mounted, so that no mount outlives it.</summary>
public static class TestMounts
{
    /// <summary>
    /// A reader still polling a domain on the mount (a host's reporter, until the test's actor system stops) holds it
    /// busy for a moment: tried again for 2 s, then detached lazily (CI once left a bind mount behind). False when even
    /// that failed.
    /// </summary>
    public static async Task<bool> UnmountAsync(string path)
    {
        for (var attempt = 0; attempt < 20; attempt++)
        {
            if ((await ProcessRunner.RunAsync("umount", [path])).Succeeded) return true;
            await Task.Delay(100);
        }
        return (await ProcessRunner.RunAsync("umount", ["-l", path])).Succeeded;
    }
}

/// <summary>
/// A folder bind-mounted over an empty mount point (the tests run as root), as an NFS export is mounted: unmounting
/// leaves the bare mount point and keeps the data, mounting again brings it back. Unmounted on dispose.
/// </summary>
public sealed class BindMount : IAsyncDisposable
{
    private readonly string _data;
    private bool _mounted;

    public string Path { get; } = System.IO.Path.Combine("/tmp", $"lsm-bind-{Guid.NewGuid():N}"[..20]);

    private BindMount(string data) => _data = data;

    public static async Task<BindMount> MountAsync(string data)
    {
        var bind = new BindMount(data);
        Directory.CreateDirectory(data);
        Directory.CreateDirectory(bind.Path);
        await bind.MountAgainAsync();
        return bind;
    }

    public async Task MountAgainAsync()
    {
        await ProcessRunner.RunCheckedAsync("mount", ["--bind", _data, Path], ErrorCodes.IoError);
        _mounted = true;
    }

    public async Task UnmountAsync()
    {
        await ProcessRunner.RunCheckedAsync("umount", [Path], ErrorCodes.IoError);
        _mounted = false;
    }

    public async ValueTask DisposeAsync()
    {
        if (_mounted && await TestMounts.UnmountAsync(Path)) _mounted = false;
        if (!_mounted && Directory.Exists(Path) && !Directory.EnumerateFileSystemEntries(Path).Any()) Directory.Delete(Path);
    }
}

/// <summary>Deleting on the file domain: with no free space, after a crash half-way, and never under a running QEMU.</summary>
public sealed class FileDeleteTests : IDisposable
{
    private readonly TempDomainRoot _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public async Task Deletes_and_the_cleanup_work_on_a_full_file_system_where_no_metadata_can_be_written()
    {
        await using var tmpfs = await Tmpfs.MountAsync(64 << 20);
        var source = await _temp.NewDomainAsync("source");
        var destination = await FileStorageDomain.CreateAsync(tmpfs.Path, DomainId.New(), "full", 1L << 30);
        var (rolledBack, volumes) = await ThreeVolumeChainAsync(source);
        var (abandoned, _) = await ThreeVolumeChainAsync(source);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, rolledBack, owner);
        await destination.CopyVolumeDataAsync(source, rolledBack, volumes[0]);
        await destination.CloneImageStructureAsync(source, abandoned, TestOwners.New());
        var operatorDisk = ImageId.New();
        await destination.CreateVolumeAsync(new NewVolume(operatorDisk, VolumeId.New(), VolumeFormat.Raw, 4 << 20));
        tmpfs.Fill();
        Assert.True(new DriveInfo(tmpfs.Path).AvailableFreeSpace < 4096);
        // What used to happen first in a delete: a metadata write, which the full file system refuses.
        await Assert.ThrowsAnyAsync<IOException>(() => destination.MarkLegalAsync(rolledBack, volumes[1]));

        Assert.Equal(3, (await destination.DeleteOwnedVolumesAsync(rolledBack, owner)).Count);
        await destination.DeleteImageAsync(operatorDisk);
        Assert.Equal(3, (await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count);

        Assert.Empty(await destination.ListImagesAsync());
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(destination.DomainPath, "images")));
    }

    [Fact]
    public async Task A_destination_that_fills_up_during_the_mirror_is_rolled_back_to_empty_and_the_VM_runs_on()
    {
        await using var tmpfs = await Tmpfs.MountAsync(64 << 20);
        await using var bed = await HostLayerBed.StartAsync();
        var full = await FileStorageDomain.CreateAsync(tmpfs.Path, DomainId.New(), "fills-up", 1L << 30);
        bed.Pool.Attach(full);
        var onA = await bed.PathsOnAsync(bed.A);
        var filled = 0;
        var fillWhenMirroring = new Hook(p =>
        {
            if (p.Step == "mirror" && Interlocked.Exchange(ref filled, 1) == 0) tmpfs.Fill();
        });

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var failed = await Assert.ThrowsAsync<OperationFailedException>(() => bed.Mover().MoveAsync(bed.Vm, bed.Image, bed.A.Id, full.Id,
            new MoveOptions(MoveStrategy.PreCopy), fillWhenMirroring, timeout.Token));

        // The move failed for want of space, and the rollback's delete, on the same full file system, did not.
        Assert.True(failed.Code == ErrorCodes.NotEnoughSpace || failed.Message.Contains("No space", StringComparison.Ordinal), failed.ToString());
        Assert.Equal(1, filled);
        Assert.Empty(await full.ListImagesAsync());
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(full.DomainPath, "images")));
        var drive = await bed.DriveAsync();
        Assert.Equal(onA, drive.OpenChain);
        Assert.Null(drive.Job);
        Assert.All((await bed.A.DescribeImageAsync(bed.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        await bed.Hypervisor.StopVmAsync(bed.Vm);
    }

    private sealed class Hook(Action<MoveProgress> action) : IProgress<MoveProgress>
    {
        public void Report(MoveProgress value) => action(value);
    }

    [Fact]
    public async Task A_whole_image_delete_interrupted_after_its_rename_leaves_nothing_readable_and_the_cleanup_finishes_it()
    {
        var domain = await _temp.NewDomainAsync("crash");
        var (image, _) = await ThreeVolumeChainAsync(domain);
        var images = Path.Combine(domain.DomainPath, "images");
        // What a crash right after the delete's first (atomic) step leaves.
        var usedBefore = (await domain.DescribeAsync()).UsedBytes;
        Directory.Move(Path.Combine(images, image.ToString()), Path.Combine(images, $"_remove_me_{image}_{Guid.NewGuid():N}"));

        Assert.Equal(usedBefore, (await domain.DescribeAsync()).UsedBytes);
        Assert.Empty(await domain.ListImagesAsync());
        await RefusedAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(image));
        Assert.Empty(await domain.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
        Assert.Empty(Directory.EnumerateFileSystemEntries(images));
        Assert.Equal(0, (await domain.DescribeAsync()).UsedBytes);
    }

    /// <summary>
    /// The last step of every move: the delete answers once its rename is durable, and its files are unlinked after (0.5–1.5 s
    /// for 2 GiB on this file system). Until they are, the image is gone for every reader and its space still counts as used.
    /// </summary>
    [Fact]
    public async Task A_whole_image_delete_answers_after_its_rename_and_its_files_are_unlinked_after_counted_as_used_until_then()
    {
        var domain = await _temp.NewDomainAsync("source");
        var (image, _) = await ThreeVolumeChainAsync(domain);
        var (kept, _) = await ThreeVolumeChainAsync(domain);
        var images = Path.Combine(domain.DomainPath, "images");
        var usedWithBoth = (await domain.DescribeAsync()).UsedBytes;

        // The remover held back (as if busy with an earlier image): the delete still answers.
        ImageFolderRemover.For(images).Exclusively(() =>
        {
            Assert.True(domain.DeleteImageAsync(image).Wait(TimeSpan.FromSeconds(30)), "the delete waited for the unlinks");
            Assert.Single(Directory.EnumerateDirectories(images, "_remove_me_*"));
            Assert.Equal(usedWithBoth, domain.DescribeAsync().Result.UsedBytes);
            return true;
        });
        Assert.Equal([kept], await domain.ListImagesAsync());
        await RefusedAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(image));

        await FileStorageDomain.RemovalsFinishedAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal([Path.Combine(images, kept.ToString())], Directory.EnumerateDirectories(images));
        Assert.True((await domain.DescribeAsync()).UsedBytes < usedWithBoth);
        Assert.Equal(3, (await domain.DescribeImageAsync(kept)).Volumes.Count);
    }

    /// <summary>
    /// A move back right after a move away: the room the delete gives back is still being unlinked. A create short of room
    /// waits for those unlinks instead of being refused NOT_ENOUGH_SPACE.
    /// </summary>
    [Fact]
    public async Task A_create_short_of_room_waits_for_the_unlinks_of_a_delete_before_it_is_refused()
    {
        const long MiB = 1 << 20;
        var domain = await _temp.NewDomainAsync("tight", capacity: 64 * MiB);
        var gone = ImageId.New();
        await domain.CreateVolumeAsync(new NewVolume(gone, VolumeId.New(), VolumeFormat.Raw, 40 * MiB, Allocation: VolumeAllocation.Preallocated));
        var images = Path.Combine(domain.DomainPath, "images");
        using var held = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        // The remover held back, as if busy unlinking an earlier image.
        var holding = Task.Run(() => ImageFolderRemover.For(images).Exclusively(() =>
        {
            held.Set();
            return release.Wait(TimeSpan.FromSeconds(30));
        }));
        held.Wait(TimeSpan.FromSeconds(30));

        await domain.DeleteImageAsync(gone);
        Assert.Single(Directory.EnumerateDirectories(images, "_remove_me_*"));
        var again = domain.CreateVolumeAsync(new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Raw, 40 * MiB, Allocation: VolumeAllocation.Preallocated));
        await Task.Delay(TimeSpan.FromMilliseconds(300));
        Assert.False(again.IsCompleted, again.Exception?.ToString() ?? "the create went on while 40 MiB of the 64 were still being unlinked");

        release.Set();
        Assert.True(await holding);
        var made = await again.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Legality.Legal, made.Legality);
        Assert.Empty(Directory.EnumerateDirectories(images, "_remove_me_*"));
    }

    /// <summary>An unlink that fails (here a file that is a mount point: EBUSY, even for root) is tried again until it works.</summary>
    [Fact]
    public async Task A_deleted_image_whose_files_cannot_be_unlinked_yet_keeps_its_space_counted_and_is_unlinked_once_they_can()
    {
        var domain = await _temp.NewDomainAsync("source");
        var (image, volumes) = await ThreeVolumeChainAsync(domain);
        var images = Path.Combine(domain.DomainPath, "images");
        string? pinned = null;
        try
        {
            ImageFolderRemover.For(images).Exclusively(() =>
            {
                Assert.True(domain.DeleteImageAsync(image).Wait(TimeSpan.FromSeconds(30)));
                var removing = Directory.EnumerateDirectories(images, "_remove_me_*").Single();
                pinned = Path.Combine(removing, volumes[1].ToString());
                ProcessRunner.RunCheckedAsync("mount", ["--bind", "/dev/null", pinned], ErrorCodes.IoError).Wait();
                return true;
            });
            await Task.Delay(TimeSpan.FromMilliseconds(500)); // the first attempt has failed by now; the next one comes after 1 s
            Assert.Single(Directory.EnumerateDirectories(images, "_remove_me_*"));
            Assert.Empty(await domain.ListImagesAsync());
        }
        finally
        {
            if (pinned is not null) await ProcessRunner.RunCheckedAsync("umount", [pinned], ErrorCodes.IoError);
        }
        await FileStorageDomain.RemovalsFinishedAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Empty(Directory.EnumerateFileSystemEntries(images));
        Assert.Equal(0, (await domain.DescribeAsync()).UsedBytes);
    }

    [Fact]
    public async Task A_per_volume_delete_interrupted_after_the_first_unlink_leaves_a_chain_nobody_can_open_which_the_cleanup_removes()
    {
        var domain = await _temp.NewDomainAsync("crash");
        var (image, volumes) = await ThreeVolumeChainAsync(domain);
        var (kept, _) = await ThreeVolumeChainAsync(domain);
        // Parents first: a crash after the base's metadata went leaves its data file and the two volumes over it.
        IOFile.Delete(domain.Locate(image, volumes[0]) + ".meta");

        await RefusedAsync(ErrorCodes.VolumeNotFound, () => new StoragePool([domain]).ResolveChainAsync(domain.Id, image));
        var removed = await domain.RemoveIllegalLeftoversAsync(new HashSet<ImageId>());

        Assert.Equal(new[] { volumes[1], volumes[2] }.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.Equal([kept], await domain.ListImagesAsync());
        Assert.False(Directory.Exists(Path.Combine(domain.DomainPath, "images", image.ToString())));
    }

    [Fact]
    public async Task Old_metadata_without_an_owner_still_reads_and_an_owner_is_written_as_OWNER_and_OWNERGEN()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await ThreeVolumeChainAsync(source);
        var owner = new VolumeOwner(MigrationId.New(), 7);

        await destination.CloneImageStructureAsync(source, image, owner);

        var lines = await IOFile.ReadAllLinesAsync(destination.Locate(image, volumes[1]) + ".meta");
        Assert.Equal(["OWNER=" + owner.Migration, "OWNERGEN=7"], lines[^2..]);
        Assert.All((await source.DescribeImageAsync(image)).Volumes, v => Assert.Null(v.Owner));
        Assert.Equal(owner, (await destination.DescribeVolumeAsync(image, volumes[1])).Owner);
        // A command of the same migration under an older generation is stale: it changes nothing.
        await RefusedAsync(ErrorCodes.Conflict, () => destination.DeleteOwnedVolumesAsync(image, owner with { Generation = 6 }));
        Assert.Equal(3, (await destination.DescribeImageAsync(image)).Volumes.Count);
    }

    /// <summary>
    /// An unmounted domain reads as an empty folder. Before, the source delete found "no image" there, called itself done
    /// and wrote its retired mark into the bare mount point; the image came back with the mount, never deleted, and the
    /// probe's "is the leaf there" read "no". Now absence is believed only where the domain's metadata is found.
    /// </summary>
    [Fact]
    public async Task An_unmounted_domain_reads_as_unreachable_not_as_empty_and_nothing_is_deleted_or_written_until_it_is_back()
    {
        await using var mount = await BindMount.MountAsync(Path.Combine(_temp.Root, "exported"));
        var source = await FileStorageDomain.CreateAsync(mount.Path, DomainId.New(), "on-nfs", 1L << 30);
        var destination = await _temp.NewDomainAsync("local");
        var (image, volumes) = await ThreeVolumeChainAsync(source);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, image, owner);
        foreach (var volume in volumes) await destination.CopyVolumeDataAsync(source, image, volume);

        await mount.UnmountAsync();
        Assert.Empty(Directory.EnumerateFileSystemEntries(mount.Path));

        var why = await RefusedAsync(ErrorCodes.IoError, () => SourceRetirement.DeleteSourceImageAsync(source, destination, image, owner.Migration));
        Assert.Contains("not reachable", why.Message);
        await RefusedAsync(ErrorCodes.IoError, () => source.ListImagesAsync());
        await RefusedAsync(ErrorCodes.IoError, () => source.DescribeImageAsync(image));
        await RefusedAsync(ErrorCodes.IoError, () => source.DescribeVolumeAsync(image, volumes[^1]));
        await RefusedAsync(ErrorCodes.IoError, () => source.DescribeAsync());
        await RefusedAsync(ErrorCodes.IoError, () => source.HasMigrationMarkAsync(owner.Migration, image, MigrationMark.Retired));
        await RefusedAsync(ErrorCodes.IoError, () => source.MarkMigrationAsync(owner.Migration, image, MigrationMark.Ended));
        await RefusedAsync(ErrorCodes.IoError, () => source.DeleteImageAsync(image));
        await RefusedAsync(ErrorCodes.IoError, () => source.DeleteOwnedVolumesAsync(image, owner));
        await RefusedAsync(ErrorCodes.IoError, () => source.CreateVolumeAsync(new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Cow, 1 << 20)));
        Assert.Empty(Directory.EnumerateFileSystemEntries(mount.Path)); // nothing written into the bare mount point

        await mount.MountAgainAsync();
        Assert.Equal(volumes, (await source.DescribeImageAsync(image)).Volumes.Select(v => v.Id));
        Assert.False(await source.HasMigrationMarkAsync(owner.Migration, image, MigrationMark.Retired));
        await SourceRetirement.DeleteSourceImageAsync(source, destination, image, owner.Migration);
        Assert.Empty(await source.ListImagesAsync());
        Assert.True(await source.HasMigrationMarkAsync(owner.Migration, image, MigrationMark.Retired));
    }

    [Fact]
    public async Task A_running_QEMU_holds_every_volume_of_its_chain_and_the_source_is_not_deleted_under_it()
    {
        await using var bed = await HostLayerBed.StartAsync();

        // Even the read-only backing layers: QEMU locks them (byte 100), which the probe sees without opening for write.
        foreach (var volume in bed.Volumes)
            Assert.NotNull(Posix.LockHolder(bed.A.Locate(bed.Image, volume)));
        var e = await RefusedAsync(ErrorCodes.VolumeInUse, () => bed.A.DeleteImageAsync(bed.Image));
        Assert.Contains("open in another process", e.Message);
        Assert.Equal(bed.Volumes, (await bed.A.DescribeImageAsync(bed.Image)).Volumes.Select(v => v.Id));
        Assert.All(bed.Volumes, v => Assert.True(IOFile.Exists(bed.A.Locate(bed.Image, v))));
        Assert.True((await bed.Hypervisor.DescribeVmAsync(bed.Vm)).Running);

        await bed.Hypervisor.StopVmAsync(bed.Vm);
        for (var i = 0; i < 100 && bed.Volumes.Any(v => Posix.LockHolder(bed.A.Locate(bed.Image, v)) is not null); i++)
            await Task.Delay(50);
        Assert.All(bed.Volumes, v => Assert.Null(Posix.LockHolder(bed.A.Locate(bed.Image, v))));
        await bed.A.DeleteImageAsync(bed.Image);
        Assert.Empty(await bed.A.ListImagesAsync());
    }
}
