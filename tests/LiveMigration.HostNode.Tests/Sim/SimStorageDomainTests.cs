using System.Diagnostics;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.Sim;
using LiveMigration.HostNode.Tests.Contract;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Sim;

public sealed class SimStorageDomainTests
{
    private const long MiB = 1L << 20;
    private const string Copy = nameof(IStorageDomain.CopyVolumeDataAsync);

    private static SimStorageDomain NewDomain(string name, long capacity = 1L << 30, SimStorageOptions? options = null) =>
        new(DomainId.New(), name, capacity, options);

    /// <summary>A one-volume image of <paramref name="bytes"/> on the source, cloned (empty, ILLEGAL) onto the destination.</summary>
    private static async Task<(ImageId Image, VolumeId Volume)> CloneOneVolumeAsync(SimStorageDomain source, SimStorageDomain destination, long bytes)
    {
        var image = ImageId.New();
        var volume = VolumeId.New();
        await source.CreateVolumeAsync(new NewVolume(image, volume, VolumeFormat.Cow, 1L << 30));
        source.SeedAllocated(image, volume, bytes);
        await destination.CloneImageStructureAsync(source, image, TestOwners.Default);
        return (image, volume);
    }

    [Fact]
    public void Locate_names_domain_image_and_volume_in_a_sim_locator()
    {
        var domain = NewDomain("a");
        var (image, volume) = (ImageId.New(), VolumeId.New());
        Assert.Equal("sim", domain.Kind);
        Assert.Equal($"sim:{domain.Id}/{image}/{volume}", domain.Locate(image, volume));
    }

    [Fact]
    public async Task FailNext_fails_that_many_calls_with_the_code_and_changes_nothing()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b");
        var chain = await ChainSeeder.SeedAsync(source, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        destination.Faults.FailNext(nameof(IStorageDomain.CloneImageStructureAsync), times: 2, code: ErrorCodes.IoError);

        await ContractAssert.FailsWithAsync(ErrorCodes.IoError, () => destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default));
        await ContractAssert.FailsWithAsync(ErrorCodes.IoError, () => destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default));
        Assert.Empty(await destination.ListImagesAsync());

        Assert.Equal(3, (await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default)).Volumes.Count);
        Assert.Equal(0, destination.Faults.PendingCount);
    }

    [Fact]
    public async Task A_copy_that_dies_half_way_leaves_an_illegal_twin_with_partial_data_and_a_retry_completes_it()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", options: new SimStorageOptions { ProgressStepBytes = MiB });
        var (image, volume) = await CloneOneVolumeAsync(source, destination, 8 * MiB);
        destination.Faults.DieNext(Copy, atFraction: 0.5);

        await ContractAssert.FailsWithAsync(ErrorCodes.IoError, () => destination.CopyVolumeDataAsync(source, image, volume));

        var partial = await destination.DescribeVolumeAsync(image, volume);
        Assert.Equal(Legality.Illegal, partial.Legality);
        Assert.Equal(4 * MiB, partial.AllocatedBytes);
        var done = await destination.CopyVolumeDataAsync(source, image, volume);
        Assert.Equal(Legality.Legal, done.Legality);
        Assert.Equal(8 * MiB, done.AllocatedBytes);
        Assert.Equal(1, done.Generation);
    }

    [Fact]
    public async Task An_injected_out_of_space_fails_the_copy_part_way_and_the_twin_stays_illegal()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", options: new SimStorageOptions { ProgressStepBytes = MiB });
        var (image, volume) = await CloneOneVolumeAsync(source, destination, 8 * MiB);
        destination.Faults.OutOfSpaceNext(Copy, atFraction: 0.25);

        await ContractAssert.FailsWithAsync(ErrorCodes.NotEnoughSpace, () => destination.CopyVolumeDataAsync(source, image, volume));

        var twin = await destination.DescribeVolumeAsync(image, volume);
        Assert.Equal(Legality.Illegal, twin.Legality);
        Assert.Equal(2 * MiB, twin.AllocatedBytes);
        Assert.Single(await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
    }

    [Fact]
    public async Task Two_copies_that_fit_alone_but_not_together_run_out_of_space_while_copying()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", capacity: 12 * MiB,
            new SimStorageOptions { CopyBytesPerSecond = 64 * MiB, ProgressStepBytes = MiB });
        var first = await CloneOneVolumeAsync(source, destination, 8 * MiB);
        var second = await CloneOneVolumeAsync(source, destination, 8 * MiB);

        var copies = new[] { first, second }
            .Select(c => Task.Run(async () =>
            {
                try { return (await destination.CopyVolumeDataAsync(source, c.Image, c.Volume)).Legality.ToString(); }
                catch (OperationFailedException e) { return e.Code; }
            }))
            .ToList();
        var outcomes = await Task.WhenAll(copies);

        // like ENOSPC on a shared file system: at least one writer fails, maybe both; never a LEGAL partial copy
        Assert.Contains(ErrorCodes.NotEnoughSpace, outcomes);
        foreach (var c in new[] { first, second })
        {
            var twin = await destination.DescribeVolumeAsync(c.Image, c.Volume);
            Assert.True(twin.Legality == Legality.Illegal || twin.AllocatedBytes == 8 * MiB, $"{twin.Legality} twin holds {twin.AllocatedBytes} bytes");
        }
        Assert.InRange((await destination.DescribeAsync()).UsedBytes, 8 * MiB, 12 * MiB);
        Assert.Equal(destination.RecountUsedBytes(), (await destination.DescribeAsync()).UsedBytes);
    }

    [Fact]
    public async Task A_stalled_copy_waits_for_its_release_and_a_repeat_attaches_to_it()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", options: new SimStorageOptions { ProgressStepBytes = MiB });
        var (image, volume) = await CloneOneVolumeAsync(source, destination, 8 * MiB);
        var stall = destination.Faults.StallNext(Copy, atFraction: 0.5);

        var copy = destination.CopyVolumeDataAsync(source, image, volume);
        await stall.Reached.WaitAsync(TimeSpan.FromSeconds(10));
        var repeat = destination.CopyVolumeDataAsync(source, image, volume);
        var held = await destination.DescribeVolumeAsync(image, volume);
        Assert.False(copy.IsCompleted);
        Assert.Equal(Legality.Illegal, held.Legality);
        Assert.Equal(4 * MiB, held.AllocatedBytes);

        stall.Release();
        var (a, b) = (await copy, await repeat);
        Assert.Equal(Legality.Legal, a.Legality);
        Assert.Equal(a, b);
        Assert.Equal(1, a.Generation);
    }

    [Fact]
    public async Task A_copy_takes_the_modelled_time_scaled_and_reports_growing_progress()
    {
        var source = NewDomain("a");
        var realTime = NewDomain("b", options: new SimStorageOptions { CopyBytesPerSecond = 256 * MiB, ProgressStepBytes = 4 * MiB });
        var fast = NewDomain("c", options: new SimStorageOptions { CopyBytesPerSecond = 256 * MiB, TimeScale = 0.01 });
        var (image, volume) = await CloneOneVolumeAsync(source, realTime, 64 * MiB);
        await fast.CloneImageStructureAsync(source, image, TestOwners.Default);

        var progress = new RecordingProgress<CopyProgress>();
        var clock = Stopwatch.StartNew();
        await realTime.CopyVolumeDataAsync(source, image, volume, progress);
        var real = clock.Elapsed;
        clock.Restart();
        await fast.CopyVolumeDataAsync(source, image, volume);
        var scaled = clock.Elapsed;

        Assert.True(real >= TimeSpan.FromMilliseconds(230), $"64 MiB at 256 MiB/s took {real.TotalMilliseconds} ms");
        Assert.True(scaled < real, $"scaled copy took {scaled.TotalMilliseconds} ms, real-time {real.TotalMilliseconds} ms");
        Assert.True(progress.Reports.Count >= 16, $"{progress.Reports.Count} progress reports");
        Assert.Equal(progress.Reports.Select(r => r.Done).Order(), progress.Reports.Select(r => r.Done));
        Assert.All(progress.Reports, r => Assert.Equal(64 * MiB, r.Total));
    }

    [Fact]
    public async Task A_delete_that_dies_leaves_nothing_readable_only_space_the_cleanup_frees()
    {
        var domain = NewDomain("a");
        var chain = await ChainSeeder.SeedAsync(domain, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        domain.Faults.DieNext(nameof(IStorageDomain.DeleteImageAsync));

        await ContractAssert.FailsWithAsync(ErrorCodes.IoError, () => domain.DeleteImageAsync(chain.Image));

        // As the file adapter's rename of the image folder: gone for every reader at once, its space not yet freed.
        await ContractAssert.FailsWithAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(chain.Image));
        Assert.Equal(3 * ChainSeeder.LayerDataBytes, (await domain.DescribeAsync()).UsedBytes);
        Assert.Equal(domain.RecountUsedBytes(), (await domain.DescribeAsync()).UsedBytes);
        Assert.Equal(3, (await domain.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count);
        Assert.Equal(0, (await domain.DescribeAsync()).UsedBytes);
        Assert.Equal(0, domain.RecountUsedBytes());
    }

    [Fact]
    public async Task A_delete_needs_no_free_space()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", capacity: 8 * MiB);
        var chain = await ChainSeeder.SeedAsync(source, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, chain.Image, owner);
        destination.SeedAllocated(chain.Image, chain.Leaf, 8 * MiB);
        Assert.Equal(0, (await destination.DescribeAsync()).AvailableBytes);
        destination.Faults.OutOfSpaceNext(nameof(IStorageDomain.DeleteOwnedVolumesAsync));

        Assert.Equal(3, (await destination.DeleteOwnedVolumesAsync(chain.Image, owner)).Count);
        Assert.Empty(await destination.ListImagesAsync());
    }

    [Fact]
    public async Task Illegal_data_is_never_used_as_a_copy_source_or_a_new_parent()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b");
        var third = NewDomain("c");
        var chain = await ChainSeeder.SeedAsync(source, (d, i, v, o, l, _) => SimData.WriteAsync(d, i, v, o, l));
        var newLeaf = VolumeId.New();
        await destination.CreateVolumeAsync(new NewVolume(chain.Image, newLeaf, VolumeFormat.Cow, chain.Capacity, new VolumeRef(source.Id, chain.Leaf), Owner: TestOwners.Default), source);
        await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default);

        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict,
            () => destination.SetParentAsync(chain.Image, newLeaf, new VolumeRef(destination.Id, chain.Leaf), destination, rewriteHeader: false));
        await third.CloneImageStructureAsync(destination, chain.Image, TestOwners.Default);
        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict, () => third.CopyVolumeDataAsync(destination, chain.Image, chain.Base));
        await ContractAssert.FailsWithAsync(ErrorCodes.InvalidArgument,
            () => destination.SetParentAsync(chain.Image, newLeaf, new VolumeRef(destination.Id, chain.Middle), destination, rewriteHeader: false));
    }

    [Fact]
    public async Task Many_parallel_clones_and_copies_keep_the_books_straight()
    {
        var source = NewDomain("a");
        var destination = NewDomain("b", options: new SimStorageOptions { TimeScale = 0.01 });
        var chains = new List<SeededChain>();
        for (var i = 0; i < 24; i++)
            chains.Add(await ChainSeeder.SeedAsync(source, (d, im, v, o, l, _) => SimData.WriteAsync(d, im, v, o, l)));

        await Task.WhenAll(chains.Select(c => Task.Run(async () =>
        {
            await destination.CloneImageStructureAsync(source, c.Image, TestOwners.Default);
            await Task.WhenAll(c.Ids.Select(id => destination.CopyVolumeDataAsync(source, c.Image, id)));
        })));

        var info = await destination.DescribeAsync();
        // the usage kept as volumes change is the sum over them
        Assert.Equal(destination.RecountUsedBytes(), info.UsedBytes);
        Assert.Equal(source.RecountUsedBytes(), (await source.DescribeAsync()).UsedBytes);
        Assert.Equal((await source.DescribeAsync()).UsedBytes, info.UsedBytes);
        Assert.Equal(24 * 3 * ChainSeeder.LayerDataBytes, info.UsedBytes);
        foreach (var c in chains)
            Assert.All((await destination.DescribeImageAsync(c.Image)).Volumes, v => Assert.Equal((Legality.Legal, 1), (v.Legality, v.Generation)));
    }
}
