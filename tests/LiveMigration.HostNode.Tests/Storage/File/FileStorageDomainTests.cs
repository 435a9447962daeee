using System.Text.Json.Nodes;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;
using static LiveMigration.HostNode.Tests.Storage.File.TempDomainRoot;

namespace LiveMigration.HostNode.Tests.Storage.File;

public sealed class FileStorageDomainTests : IDisposable
{
    private readonly TempDomainRoot _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public async Task Creating_a_domain_again_attaches_to_it_and_different_attributes_conflict()
    {
        var id = DomainId.New();
        var first = await FileStorageDomain.CreateAsync(_temp.Root, id, "domain A", 1 << 30);
        var again = await FileStorageDomain.CreateAsync(_temp.Root, id, "domain A", 1 << 30);
        var attached = await FileStorageDomain.AttachAsync(_temp.Root, id);

        Assert.Equal(Path.Combine(_temp.Root, id.ToString()), first.DomainPath);
        Assert.Equal(first.DomainPath, again.DomainPath);
        Assert.Equal("file", attached.Kind);
        Assert.True(Directory.Exists(Path.Combine(first.DomainPath, "images")));
        var metadata = await IOFile.ReadAllLinesAsync(Path.Combine(first.DomainPath, "dom_md", "metadata"));
        Assert.Equal(["NAME=domain A", $"ID={id}", "POOL=", "KIND=file", $"CAPACITY={1 << 30}"], metadata);
        var info = await attached.DescribeAsync();
        Assert.Equal((1L << 30, 0L, "domain A"), (info.CapacityBytes, info.UsedBytes, info.Name));
        Assert.True(info.FilesystemFreeBytes > 0);

        await RefusedAsync(ErrorCodes.Conflict, () => FileStorageDomain.CreateAsync(_temp.Root, id, "domain B", 1 << 30));
        await RefusedAsync(ErrorCodes.Conflict, () => FileStorageDomain.CreateAsync(_temp.Root, id, "domain A", 1 << 20));
        await RefusedAsync(ErrorCodes.DomainNotFound, () => FileStorageDomain.AttachAsync(_temp.Root, DomainId.New()));
    }

    [Fact]
    public async Task A_reports_used_bytes_are_a_count_up_to_the_age_it_names_and_the_domains_own_changes_count_anew()
    {
        var domain = await FileStorageDomain.CreateAsync(_temp.Root, DomainId.New(), "domain A", 1 << 30);
        var image = ImageId.New();
        var written = await domain.CreateVolumeAsync(new NewVolume(image, VolumeId.New(), VolumeFormat.Raw, 16 << 20));
        var counted = (await domain.DescribeAsync(TimeSpan.FromMinutes(10))).UsedBytes;

        // a guest writes 8 MiB into its sparse disk: not this domain's change
        await using (var disk = new FileStream(domain.Locate(image, written.Id), FileMode.Open, FileAccess.Write))
        {
            await disk.WriteAsync(Enumerable.Repeat((byte)0x5a, 8 << 20).ToArray());
            disk.Flush(flushToDisk: true);
        }
        Assert.Equal(counted, (await domain.DescribeAsync(TimeSpan.FromMinutes(10))).UsedBytes);
        var exact = (await domain.DescribeAsync()).UsedBytes;
        // (the block qemu-img allocates first is among those written)
        Assert.True(exact > counted + (7 << 20), $"{exact} bytes used after 8 MiB written to a domain that used {counted}");
        Assert.Equal(exact, (await domain.DescribeAsync(TimeSpan.Zero)).UsedBytes);

        // a volume this domain makes shows in the next report at once
        await domain.CreateVolumeAsync(new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Raw, 4 << 20, Allocation: VolumeAllocation.Preallocated));
        Assert.True((await domain.DescribeAsync(TimeSpan.FromMinutes(10))).UsedBytes >= exact + (4 << 20));
    }

    /// <summary>An undone migration's mark written by the code before marks were per disk (one file named by the migration) still counts for each disk.</summary>
    [Fact]
    public async Task An_ended_mark_of_the_older_per_migration_form_still_refuses_late_commands_of_every_disk()
    {
        var domain = await FileStorageDomain.CreateAsync(_temp.Root, DomainId.New(), "domain A", 1 << 30);
        var migration = MigrationId.New();
        Directory.CreateDirectory(Path.Combine(domain.DomainPath, "dom_md", "ended"));
        await IOFile.WriteAllBytesAsync(Path.Combine(domain.DomainPath, "dom_md", "ended", migration.ToString()), []);

        Assert.True(await domain.HasMigrationMarkAsync(migration, ImageId.New(), MigrationMark.Ended));
        Assert.True(await domain.HasMigrationMarkAsync(migration, ImageId.New(), MigrationMark.Ended));
        Assert.False(await domain.HasMigrationMarkAsync(migration, ImageId.New(), MigrationMark.Kept));
        Assert.False(await domain.HasMigrationMarkAsync(MigrationId.New(), ImageId.New(), MigrationMark.Ended));
    }

    [Theory]
    [InlineData("")]
    [InlineData("two\nlines")]
    [InlineData("key=value")]
    [InlineData("a/b")]
    [InlineData("tab\there")]
    [InlineData("   ")]
    public async Task Bad_domain_names_are_refused_and_nothing_is_created(string name)
    {
        await RefusedAsync(ErrorCodes.InvalidId, () => FileStorageDomain.CreateAsync(_temp.Root, DomainId.New(), name, 1 << 30));
        Assert.Empty(Directory.EnumerateFileSystemEntries(_temp.Root));
    }

    [Fact]
    public async Task A_name_longer_than_100_characters_is_refused_and_100_is_accepted()
    {
        await RefusedAsync(ErrorCodes.InvalidId, () => FileStorageDomain.CreateAsync(_temp.Root, DomainId.New(), new string('n', 101), 1 << 30));
        var domain = await FileStorageDomain.CreateAsync(_temp.Root, DomainId.New(), new string('n', 100), 1 << 30);
        Assert.Equal(100, (await domain.DescribeAsync()).Name.Length);
    }

    [Theory]
    [InlineData("../x")]
    [InlineData("..")]
    [InlineData("/etc/passwd")]
    [InlineData("2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11/..")]
    [InlineData("{2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11}")]
    public void Ids_that_are_not_uuids_are_refused_by_the_parsers(string text)
    {
        Assert.Equal(ErrorCodes.InvalidId, Assert.Throws<OperationFailedException>(() => DomainId.Parse(text)).Code);
        Assert.Equal(ErrorCodes.InvalidId, Assert.Throws<OperationFailedException>(() => ImageId.Parse(text)).Code);
        Assert.Equal(ErrorCodes.InvalidId, Assert.Throws<OperationFailedException>(() => VolumeId.Parse(text)).Code);
    }

    [Fact]
    public async Task Junk_in_the_domain_folders_is_ignored_and_never_followed()
    {
        var domain = await _temp.NewDomainAsync("junk");
        var (image, volumes) = await ThreeVolumeChainAsync(domain);
        var images = Path.Combine(domain.DomainPath, "images");
        var outside = Path.Combine(_temp.Root, "outside");
        Directory.CreateDirectory(Path.Combine(outside, "inner"));
        Directory.CreateDirectory(Path.Combine(images, "not-a-uuid"));
        Directory.CreateDirectory(Path.Combine(images, "..."));
        Directory.CreateDirectory(Path.Combine(images, "..2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11"));
        Directory.CreateSymbolicLink(Path.Combine(images, Guid.NewGuid().ToString()), outside);
        await IOFile.WriteAllTextAsync(Path.Combine(images, "stray-file"), "x");
        await IOFile.WriteAllTextAsync(Path.Combine(domain.Locate(image, volumes[0]) + "x.meta"), "DOMAIN=../..");
        await IOFile.WriteAllTextAsync(Path.Combine(domain.Locate(image, volumes[0]) + "..meta"), "junk");

        Assert.Equal([image], await domain.ListImagesAsync());
        Assert.Equal(volumes, (await domain.DescribeImageAsync(image)).Volumes.Select(v => v.Id));

        Assert.Empty(await domain.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
        await domain.DeleteImageAsync(image);
        Assert.Empty(await domain.ListImagesAsync());
        Assert.True(Directory.Exists(Path.Combine(outside, "inner")), "a symlinked folder was followed");
    }

    [Fact]
    public async Task Volume_metadata_is_written_in_the_documented_format()
    {
        var domain = await _temp.NewDomainAsync("format");
        var (image, volumes) = await ThreeVolumeChainAsync(domain);

        var lines = await IOFile.ReadAllLinesAsync(domain.Locate(image, volumes[1]) + ".meta");
        var keys = lines.Select(l => l[..l.IndexOf('=')]).ToArray();
        Assert.Equal(["DOMAIN", "IMAGE", "PUUID", "PDOMAIN", "VOLTYPE", "FORMAT", "LEGALITY", "CAPACITY", "GEN", "CTIME", "TYPE"], keys);
        Assert.Contains("TYPE=SPARSE", lines);
        Assert.Contains($"PUUID={volumes[0]}", lines);
        Assert.Contains($"PDOMAIN={domain.Id}", lines);
        Assert.Contains("VOLTYPE=INTERNAL", lines);
        Assert.Contains("FORMAT=COW", lines);
        var baseLines = await IOFile.ReadAllLinesAsync(domain.Locate(image, volumes[0]) + ".meta");
        Assert.Contains("PUUID=00000000-0000-0000-0000-000000000000", baseLines);
        Assert.Contains("FORMAT=RAW", baseLines);
        var leaf = JsonNode.Parse(await InfoAsync(domain.Locate(image, volumes[2])))!;
        Assert.Equal(volumes[1].ToString(), leaf["backing-filename"]!.GetValue<string>());

        var described = await domain.DescribeImageAsync(image);
        Assert.Equal([VolumeType.Internal, VolumeType.Internal, VolumeType.Leaf], described.Volumes.Select(v => v.Type));
        Assert.All(described.Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
        Assert.Empty(Directory.EnumerateFiles(domain.DomainPath, "*.tmp", SearchOption.AllDirectories));
    }

    [Fact]
    public async Task Creating_a_volume_again_returns_it_and_a_different_spec_conflicts()
    {
        var domain = await _temp.NewDomainAsync("create");
        var image = ImageId.New();
        var spec = new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, 8 << 20);
        var first = await domain.CreateVolumeAsync(spec);
        var again = await domain.CreateVolumeAsync(spec);

        Assert.Equal(first, again);
        await RefusedAsync(ErrorCodes.Conflict, () => domain.CreateVolumeAsync(spec with { Capacity = 16 << 20 }));
        await RefusedAsync(ErrorCodes.InvalidArgument, () => domain.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, 4 << 20, new VolumeRef(domain.Id, spec.Id))));
        await RefusedAsync(ErrorCodes.InvalidArgument, () => domain.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), VolumeFormat.Raw, 8 << 20, new VolumeRef(domain.Id, spec.Id))));
        await RefusedAsync(ErrorCodes.VolumeNotFound, () => domain.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, 8 << 20, new VolumeRef(domain.Id, VolumeId.New()))));
        await RefusedAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(ImageId.New()));
        Assert.Single((await domain.DescribeImageAsync(image)).Volumes);
    }

    [Fact]
    public async Task A_three_volume_chain_cloned_and_copied_layer_by_layer_reads_the_same_and_stays_sparse()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await ThreeVolumeChainAsync(source);

        var clone = await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        Assert.Equal(volumes, clone.Volumes.Select(v => v.Id));
        Assert.Equal([null, new VolumeRef(destination.Id, volumes[0]), new VolumeRef(destination.Id, volumes[1])], clone.Volumes.Select(v => v.Parent));
        Assert.Equal([VolumeFormat.Raw, VolumeFormat.Cow, VolumeFormat.Cow], clone.Volumes.Select(v => v.Format));
        Assert.Equal([VolumeType.Internal, VolumeType.Internal, VolumeType.Leaf], clone.Volumes.Select(v => v.Type));
        Assert.All(clone.Volumes, v => Assert.Equal((Legality.Illegal, 0, 16L << 20), (v.Legality, v.Generation, v.Capacity)));
        Assert.Equal(clone.Volumes, (await destination.CloneImageStructureAsync(source, image, TestOwners.Default)).Volumes);

        // Top down on purpose: each layer is copied and verified on its own, whatever state its parents are in.
        var reports = new List<CopyProgress>();
        var progress = new SynchronousProgress(reports);
        foreach (var volume in volumes.Reverse())
        {
            var copied = await destination.CopyVolumeDataAsync(source, image, volume, progress);
            Assert.Equal((Legality.Legal, 1), (copied.Legality, copied.Generation));
        }
        Assert.Contains(reports, r => r.Done == 0);
        Assert.Contains(reports, r => r.Done == r.Total && r.Total > 0);

        var copiedImage = await destination.DescribeImageAsync(image);
        Assert.All(copiedImage.Volumes, v => Assert.Equal((Legality.Legal, 1), (v.Legality, v.Generation)));
        Assert.True(await ChainsReadTheSameAsync(source.Locate(image, volumes[2]), destination.Locate(image, volumes[2])));
        Assert.True(await ChainsReadTheSameAsync(source.Locate(image, volumes[1]), destination.Locate(image, volumes[1])));
        var sourceImage = await source.DescribeImageAsync(image);
        for (var i = 0; i < 3; i++)
        {
            var (was, now) = (sourceImage.Volumes[i].AllocatedBytes, copiedImage.Volumes[i].AllocatedBytes);
            Assert.True(Math.Abs(was - now) <= 1 << 20, $"layer {i}: {now} allocated bytes on the copy, {was} on the source");
        }
        Assert.True((await destination.DescribeAsync()).UsedBytes < 8 << 20, "the copy is not sparse");
        var leafHeader = JsonNode.Parse(await InfoAsync(destination.Locate(image, volumes[2])))!;
        Assert.Equal(volumes[1].ToString(), leafHeader["backing-filename"]!.GetValue<string>());

        var repeated = await destination.CopyVolumeDataAsync(source, image, volumes[1]);
        Assert.Equal(1, repeated.Generation);
    }

    [Fact]
    public async Task A_destination_too_small_is_refused_up_front_with_the_numbers_and_nothing_is_created()
    {
        var source = await _temp.NewDomainAsync("source");
        var small = await _temp.NewDomainAsync("small", capacity: 2 << 20);
        var (image, _) = await ThreeVolumeChainAsync(source);
        var sourceAllocated = (await source.DescribeImageAsync(image)).Volumes.Sum(v => v.AllocatedBytes);

        var error = await RefusedAsync(ErrorCodes.NotEnoughSpace, () => small.CloneImageStructureAsync(source, image, TestOwners.Default));
        Assert.Contains(sourceAllocated.ToString(), error.Message);
        Assert.Contains((await small.DescribeAsync()).AvailableBytes.ToString(), error.Message);
        Assert.Contains(small.Id.ToString(), error.Message);
        Assert.Empty(await small.ListImagesAsync());
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(small.DomainPath, "images")));

        var raw = await RefusedAsync(ErrorCodes.NotEnoughSpace,
            () => small.CreateVolumeAsync(new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Raw, 16 << 20)));
        Assert.Contains((16 << 20).ToString(), raw.Message);
        Assert.Empty(await small.ListImagesAsync());
    }

    [Fact]
    public async Task Post_copy_a_cross_domain_leaf_is_re_pointed_to_the_copied_chain()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await ThreeVolumeChainAsync(source);
        var newLeaf = VolumeId.New();

        var created = await destination.CreateVolumeAsync(
            new NewVolume(image, newLeaf, VolumeFormat.Cow, 16 << 20, new VolumeRef(source.Id, volumes[2]), Owner: TestOwners.Default), source);
        Assert.Equal(new VolumeRef(source.Id, volumes[2]), created.Parent);
        Assert.Contains($"PDOMAIN={source.Id}", await IOFile.ReadAllLinesAsync(destination.Locate(image, newLeaf) + ".meta"));
        var header = JsonNode.Parse(await InfoAsync(destination.Locate(image, newLeaf)))!;
        Assert.Equal(source.Locate(image, volumes[2]), header["backing-filename"]!.GetValue<string>());
        Assert.Equal(VolumeType.Leaf, (await source.DescribeVolumeAsync(image, volumes[2])).Type);
        await TempDomainRoot.WriteAsync(destination.Locate(image, newLeaf), VolumeFormat.Cow, 6 << 20, 128 << 10, 0x44);
        await RefusedAsync(ErrorCodes.InvalidArgument, () => destination.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, 16 << 20, new VolumeRef(source.Id, volumes[2]))));

        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        foreach (var volume in volumes)
            await destination.CopyVolumeDataAsync(source, image, volume);
        var repointed = await destination.SetParentAsync(image, newLeaf, new VolumeRef(destination.Id, volumes[2]), null, rewriteHeader: true);
        var again = await destination.SetParentAsync(image, newLeaf, new VolumeRef(destination.Id, volumes[2]), null, rewriteHeader: true);

        Assert.Equal(new VolumeRef(destination.Id, volumes[2]), repointed.Parent);
        Assert.Equal((1, 1), (repointed.Generation, again.Generation));
        header = JsonNode.Parse(await InfoAsync(destination.Locate(image, newLeaf)))!;
        Assert.Equal(volumes[2].ToString(), header["backing-filename"]!.GetValue<string>());
        var described = await destination.DescribeImageAsync(image);
        Assert.Equal([.. volumes, newLeaf], described.Volumes.Select(v => v.Id));
        Assert.Equal([VolumeType.Internal, VolumeType.Internal, VolumeType.Internal, VolumeType.Leaf], described.Volumes.Select(v => v.Type));
        await RefusedAsync(ErrorCodes.Conflict, () => destination.SetParentAsync(image, newLeaf, new VolumeRef(destination.Id, volumes[1]), null, true));

        // The source can go: the destination chain stands alone and holds every write.
        var beforeDelete = await ChainsReadTheSameAsync(source.Locate(image, volumes[2]), destination.Locate(image, volumes[2]));
        await source.DeleteImageAsync(image);
        Assert.True(beforeDelete);
        Assert.Empty(await source.ListImagesAsync());
        Assert.False(Directory.Exists(Path.Combine(source.DomainPath, "images", image.ToString())));
        await source.DeleteImageAsync(image);
        var check = await Processes.ProcessRunner.RunAsync("qemu-img", ["check", destination.Locate(image, newLeaf)]);
        Assert.True(check.Succeeded, check.StandardOutput + check.StandardError);
    }

    [Fact]
    public async Task Illegal_leftovers_are_removed_except_images_in_use()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (abandoned, abandonedVolumes) = await ThreeVolumeChainAsync(source);
        var (running, _) = await ThreeVolumeChainAsync(source);
        var (healthy, _) = await ThreeVolumeChainAsync(destination);
        await destination.CloneImageStructureAsync(source, abandoned, TestOwners.Default);
        await destination.CloneImageStructureAsync(source, running, TestOwners.Default);
        var stray = Path.Combine(destination.DomainPath, "images", healthy.ToString(), $"{Guid.NewGuid()}.meta.0123.tmp");
        await IOFile.WriteAllTextAsync(stray, "half");

        var removed = await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId> { running });

        Assert.Equal(abandonedVolumes.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.Equal(new[] { running, healthy }.OrderBy(i => i.Value), await destination.ListImagesAsync());
        Assert.False(IOFile.Exists(stray));
        Assert.Equal(3, (await source.DescribeImageAsync(abandoned)).Volumes.Count);
        Assert.Empty(await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId> { running }));
    }

    [Fact]
    public async Task A_copy_cancelled_half_way_leaves_the_twin_illegal_and_a_retry_completes_it()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var image = ImageId.New();
        VolumeId baseId = VolumeId.New(), layerId = VolumeId.New();
        await source.CreateVolumeAsync(new NewVolume(image, baseId, VolumeFormat.Cow, 512 << 20));
        await source.CreateVolumeAsync(new NewVolume(image, layerId, VolumeFormat.Cow, 512 << 20, new VolumeRef(source.Id, baseId)));
        await TempDomainRoot.WriteAsync(source.Locate(image, layerId), VolumeFormat.Cow, 0, 384 << 20, 0x5a);
        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);

        using var cancel = new CancellationTokenSource();
        var seenHalfWay = false;
        var progress = new SynchronousProgress(p =>
        {
            if (p.Done <= 0 || p.Done >= p.Total) return;
            seenHalfWay = true;
            cancel.Cancel();
        });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(
            () => destination.CopyVolumeDataAsync(source, image, layerId, progress, cancel.Token));

        Assert.True(seenHalfWay);
        var twin = await destination.DescribeVolumeAsync(image, layerId);
        Assert.Equal((Legality.Illegal, 0), (twin.Legality, twin.Generation));
        Assert.True(twin.AllocatedBytes > 0, "the copy was interrupted before it wrote anything");

        var retried = await destination.CopyVolumeDataAsync(source, image, layerId);
        Assert.Equal((Legality.Legal, 1), (retried.Legality, retried.Generation));
    }

    [Fact]
    public async Task A_twin_that_does_not_verify_stays_illegal()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await ThreeVolumeChainAsync(source);
        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        // Data the source layer does not hold: it would hide the parent there.
        await TempDomainRoot.WriteAsync(destination.Locate(image, volumes[1]), VolumeFormat.Cow, 14 << 20, 64 << 10, 0x66);

        var error = await RefusedAsync(ErrorCodes.VerifyFailed, () => destination.CopyVolumeDataAsync(source, image, volumes[1]));

        Assert.Contains(volumes[1].ToString(), error.Message);
        Assert.Equal(Legality.Illegal, (await destination.DescribeVolumeAsync(image, volumes[1])).Legality);
    }

    [Fact]
    public async Task A_layer_a_running_qemu_holds_as_backing_copies_and_its_active_layer_is_refused()
    {
        var source = await _temp.NewDomainAsync("source");
        var destination = await _temp.NewDomainAsync("destination");
        var (image, volumes) = await ThreeVolumeChainAsync(source);
        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        var leaf = source.Locate(image, volumes[2]);
        using var qemu = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("qemu-system-x86_64")
        {
            ArgumentList = { "-M", "none", "-nodefaults", "-display", "none",
                             "-blockdev", $"driver=qcow2,node-name=leaf,file.driver=file,file.filename={leaf}" },
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        })!;
        try
        {
            // QEMU has the chain open once the kernel lists its locks on the leaf. Read from /proc/locks, which takes no
            // lock: probing with `qemu-img info` did, and a probe at the moment QEMU opened the leaf made QEMU exit.
            var inode = (await Processes.ProcessRunner.RunCheckedAsync("stat", ["-c", "%i", leaf], ErrorCodes.IoError)).Trim();
            for (var i = 0; i < 100 && !qemu.HasExited && !(await IOFile.ReadAllLinesAsync("/proc/locks")).Any(l => l.Contains($":{inode} ")); i++)
                await Task.Delay(50);
            if (qemu.HasExited)
                Assert.Fail($"QEMU did not start: {await qemu.StandardError.ReadToEndAsync()}");

            var mid = await destination.CopyVolumeDataAsync(source, image, volumes[1]);
            var error = await RefusedAsync(ErrorCodes.QemuImgFailed, () => destination.CopyVolumeDataAsync(source, image, volumes[2]));

            Assert.Equal(Legality.Legal, mid.Legality);
            Assert.Contains("lock", error.Message);
            Assert.Equal(Legality.Illegal, (await destination.DescribeVolumeAsync(image, volumes[2])).Legality);
        }
        finally
        {
            qemu.Kill();
            await qemu.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task A_preallocated_base_says_so_in_its_metadata_and_metadata_written_before_TYPE_reads_as_sparse()
    {
        var domain = await _temp.NewDomainAsync("allocation");
        var image = ImageId.New();
        var preallocated = await domain.CreateVolumeAsync(new NewVolume(image, VolumeId.New(), VolumeFormat.Raw, 16 << 20, Allocation: VolumeAllocation.Preallocated));
        var metaPath = domain.Locate(image, preallocated.Id) + ".meta";
        Assert.Contains("TYPE=PREALLOCATED", await IOFile.ReadAllLinesAsync(metaPath));

        // a .meta from before TYPE existed: every volume was sparse then
        await IOFile.WriteAllLinesAsync(metaPath, (await IOFile.ReadAllLinesAsync(metaPath)).Where(l => !l.StartsWith("TYPE=", StringComparison.Ordinal)));
        Assert.Equal(VolumeAllocation.Sparse, (await domain.DescribeVolumeAsync(image, preallocated.Id)).Allocation);

        await IOFile.WriteAllLinesAsync(metaPath, [.. await IOFile.ReadAllLinesAsync(metaPath), "TYPE=THICK"]);
        var corrupt = await RefusedAsync(ErrorCodes.IoError, () => domain.DescribeVolumeAsync(image, preallocated.Id));
        Assert.Contains("TYPE=THICK is not one of SPARSE|PREALLOCATED", corrupt.Message);
    }

    [Fact]
    public async Task Marking_a_mirrored_preallocated_raw_leaf_legal_allocates_the_holes_a_mirror_punched_and_keeps_its_data()
    {
        const long size = 16 << 20;
        var domain = await _temp.NewDomainAsync("allocation");
        var image = ImageId.New();
        var leaf = await domain.CreateVolumeAsync(new NewVolume(image, VolumeId.New(), VolumeFormat.Raw, size, Legality: Legality.Illegal,
            Allocation: VolumeAllocation.Preallocated));
        var path = domain.Locate(image, leaf.Id);
        await WriteAsync(path, VolumeFormat.Raw, 1 << 20, 1 << 20, 0x5a);
        // what libvirt's block copy leaves: the data, and holes everywhere else
        await Processes.ProcessRunner.RunCheckedAsync("fallocate", ["--punch-hole", "--offset", "0", "--length", $"{1 << 20}", path], ErrorCodes.IoError);
        await Processes.ProcessRunner.RunCheckedAsync("fallocate", ["--punch-hole", "--offset", $"{2 << 20}", "--length", $"{size - (2 << 20)}", path], ErrorCodes.IoError);
        Assert.True((await domain.DescribeVolumeAsync(image, leaf.Id)).AllocatedBytes < size / 2);

        var legal = await domain.MarkLegalAsync(image, leaf.Id);

        Assert.Equal(Legality.Legal, legal.Legality);
        Assert.True(legal.AllocatedBytes >= size, $"the preallocated leaf takes {legal.AllocatedBytes} of its {size} bytes");
        var read = await Processes.ProcessRunner.RunCheckedAsync("qemu-io", ["-f", "raw", "-c", $"read -P 0x5a {1 << 20} {1 << 20}", "-c", "read -P 0 0 1048576", path],
            ErrorCodes.IoError);
        Assert.DoesNotContain("Pattern verification failed", read);
    }

    /// <summary>Reports on the caller's thread (Progress&lt;T&gt; posts to the thread pool, too late for assertions).</summary>
    private sealed class SynchronousProgress(Action<CopyProgress> onReport) : IProgress<CopyProgress>
    {
        public SynchronousProgress(List<CopyProgress> sink) : this(p => { lock (sink) sink.Add(p); }) { }
        public void Report(CopyProgress value) => onReport(value);
    }
}
