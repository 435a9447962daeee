using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Contract;

/// <summary>
/// The behaviour every <see cref="IStorageDomain"/> adapter must show, run against each kind.
/// A subclass provides exactly:
/// <list type="bullet">
/// <item><see cref="CreateDomainAsync"/>: a new, empty domain of the kind under test with that name and capacity limit
///   (file: <c>FileStorageDomain.CreateAsync(root, DomainId.New(), name, capacityBytes, ct)</c> under a temp root it owns);</item>
/// <item><see cref="WriteLayerDataAsync"/>: writes <c>length</c> bytes of <c>pattern</c> at <c>offset</c> into that one layer, as a guest
///   would (file: <c>qemu-io -f qcow2 -c "write -P pattern offset length"</c> on <c>domain.Locate(image, volume)</c>; sim: <c>SeedAllocated</c>);</item>
/// <item><see cref="HoldOpenAsync"/>: keeps a volume open as a running QEMU would until disposed (file: <c>qemu-nbd -r</c> on it,
///   which takes QEMU's image locks; sim: <c>SimStorageDomain.HoldOpen</c>);</item>
/// <item>optionally an override of <see cref="DisposeAsync"/> that deletes what it made (temp folders), calling the base.</item>
/// </list>
/// Chains are created through the port itself (<see cref="ChainSeeder"/>): base → middle → leaf, all COW, 64 MiB, 1 MiB of data per layer.
/// </summary>
public abstract class StorageDomainContract : IAsyncLifetime
{
    protected const long RoomyCapacity = 1L << 30;

    protected abstract Task<IStorageDomain> CreateDomainAsync(string name, long capacityBytes);

    protected abstract Task WriteLayerDataAsync(IStorageDomain domain, ImageId image, VolumeId volume, long offset, long length, byte pattern);

    protected abstract Task<IAsyncDisposable> HoldOpenAsync(IStorageDomain domain, ImageId image, VolumeId volume);

    public virtual Task InitializeAsync() => Task.CompletedTask;
    public virtual Task DisposeAsync() => Task.CompletedTask;

    protected Task<SeededChain> SeedChainAsync(IStorageDomain domain) => ChainSeeder.SeedAsync(domain, WriteLayerDataAsync);

    [Fact]
    public async Task A_migration_marked_ended_or_kept_stays_marked_and_only_so()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var (ended, image, other) = (MigrationId.New(), ImageId.New(), ImageId.New());
        Assert.False(await domain.HasMigrationMarkAsync(ended, image, MigrationMark.Ended));
        await domain.MarkMigrationAsync(ended, image, MigrationMark.Ended);
        await domain.MarkMigrationAsync(ended, image, MigrationMark.Ended); // a repeat is harmless
        Assert.True(await domain.HasMigrationMarkAsync(ended, image, MigrationMark.Ended));
        Assert.False(await domain.HasMigrationMarkAsync(ended, image, MigrationMark.Kept)); // each mark on its own
        Assert.False(await domain.HasMigrationMarkAsync(ended, other, MigrationMark.Ended)); // each disk on its own
        Assert.False(await domain.HasMigrationMarkAsync(MigrationId.New(), image, MigrationMark.Ended));
        // one disk of a migration kept here while another is undone here (a multi-disk migration failing half way)
        await domain.MarkMigrationAsync(ended, other, MigrationMark.Kept);
        Assert.True(await domain.HasMigrationMarkAsync(ended, other, MigrationMark.Kept));
        Assert.False(await domain.HasMigrationMarkAsync(ended, other, MigrationMark.Ended));
        Assert.False(await domain.HasMigrationMarkAsync(ended, image, MigrationMark.Kept));
    }

    [Fact]
    public async Task Describe_reports_kind_name_capacity_and_the_space_data_takes()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var empty = await domain.DescribeAsync();
        Assert.Equal(domain.Id, empty.Id);
        Assert.Equal("contract-a", empty.Name);
        Assert.Equal(domain.Kind, empty.Kind);
        Assert.Equal(RoomyCapacity, empty.CapacityBytes);
        Assert.True(empty.AvailableBytes > 0);
        Assert.Empty(await domain.ListImagesAsync());

        var chain = await SeedChainAsync(domain);
        var seeded = await domain.DescribeAsync();
        Assert.True(seeded.UsedBytes >= empty.UsedBytes + 3 * ChainSeeder.LayerDataBytes,
            $"used went from {empty.UsedBytes} to {seeded.UsedBytes} after writing 3 MiB");
        Assert.True(seeded.AvailableBytes < empty.AvailableBytes);
        Assert.Equal([chain.Image], await domain.ListImagesAsync());
    }

    [Fact]
    public async Task CreateVolume_repeated_with_the_same_arguments_returns_what_the_first_call_made()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var spec = new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Cow, ChainSeeder.Capacity);
        var first = await domain.CreateVolumeAsync(spec);
        var again = await domain.CreateVolumeAsync(spec);
        Assert.Equal(first, again);
        Assert.Single((await domain.DescribeImageAsync(spec.Image)).Volumes);

        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict,
            () => domain.CreateVolumeAsync(spec with { Capacity = 2 * ChainSeeder.Capacity }));
    }

    [Theory]
    [InlineData(VolumeFormat.Raw, VolumeAllocation.Sparse)]
    [InlineData(VolumeFormat.Raw, VolumeAllocation.Preallocated)]
    [InlineData(VolumeFormat.Cow, VolumeAllocation.Sparse)]
    [InlineData(VolumeFormat.Cow, VolumeAllocation.Preallocated)]
    public async Task A_base_volume_is_made_in_its_format_and_allocation_and_says_so(VolumeFormat format, VolumeAllocation allocation)
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var spec = new NewVolume(ImageId.New(), VolumeId.New(), format, ChainSeeder.Capacity, Allocation: allocation);

        var made = await domain.CreateVolumeAsync(spec);

        Assert.Equal((format, allocation), (made.Format, made.Allocation));
        Assert.Equal(made, await domain.DescribeVolumeAsync(spec.Image, spec.Id));
        if (format == VolumeFormat.Raw && allocation == VolumeAllocation.Preallocated)
            Assert.True(made.AllocatedBytes >= ChainSeeder.Capacity, $"a preallocated raw volume of {ChainSeeder.Capacity} bytes takes {made.AllocatedBytes}");
        else
            Assert.True(made.AllocatedBytes < ChainSeeder.Capacity / 4, $"a {allocation} {format} volume of {ChainSeeder.Capacity} bytes takes {made.AllocatedBytes}");
        Assert.Equal(made, await domain.CreateVolumeAsync(spec));
        var otherAllocation = allocation == VolumeAllocation.Sparse ? VolumeAllocation.Preallocated : VolumeAllocation.Sparse;
        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict, () => domain.CreateVolumeAsync(spec with { Allocation = otherAllocation }));
    }

    [Fact]
    public async Task Only_a_base_volume_can_be_preallocated()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var image = ImageId.New();
        var baseVolume = await domain.CreateVolumeAsync(new NewVolume(image, VolumeId.New(), VolumeFormat.Raw, ChainSeeder.Capacity));

        var refused = await ContractAssert.FailsWithAsync(ErrorCodes.InvalidArgument, () => domain.CreateVolumeAsync(
            new NewVolume(image, VolumeId.New(), VolumeFormat.Cow, ChainSeeder.Capacity, new VolumeRef(domain.Id, baseVolume.Id), Allocation: VolumeAllocation.Preallocated)));
        Assert.Contains("only a base volume can be preallocated", refused.Message);
        Assert.Single((await domain.DescribeImageAsync(image)).Volumes);
    }

    [Theory]
    [InlineData(VolumeFormat.Raw)]
    [InlineData(VolumeFormat.Cow)]
    public async Task A_preallocated_base_is_cloned_and_copied_preallocated(VolumeFormat format)
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var image = ImageId.New();
        var original = await source.CreateVolumeAsync(new NewVolume(image, VolumeId.New(), format, ChainSeeder.Capacity, Allocation: VolumeAllocation.Preallocated));
        await WriteLayerDataAsync(source, image, original.Id, 0, ChainSeeder.LayerDataBytes, 0x5a);

        var twin = Assert.Single((await destination.CloneImageStructureAsync(source, image, TestOwners.Default)).Volumes);
        Assert.Equal((format, VolumeAllocation.Preallocated), (twin.Format, twin.Allocation));
        var copied = await destination.CopyVolumeDataAsync(source, image, twin.Id);

        Assert.Equal(Legality.Legal, copied.Legality);
        Assert.Equal(VolumeAllocation.Preallocated, copied.Allocation);
        // a raw file keeps its whole size allocated (qemu-img punches holes where the source reads zero; the copy gives the space back)
        if (format == VolumeFormat.Raw)
            Assert.True(copied.AllocatedBytes >= ChainSeeder.Capacity, $"the copy of a preallocated raw volume of {ChainSeeder.Capacity} bytes takes {copied.AllocatedBytes}");
    }

    [Fact]
    public async Task A_seeded_chain_is_described_base_to_leaf_with_types_parents_and_legality()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var chain = await SeedChainAsync(domain);

        var image = await domain.DescribeImageAsync(chain.Image);
        Assert.Equal(chain.Ids, image.Volumes.Select(v => v.Id));
        Assert.Equal([VolumeType.Internal, VolumeType.Internal, VolumeType.Leaf], image.Volumes.Select(v => v.Type));
        Assert.Null(image.Volumes[0].Parent);
        Assert.Equal(new VolumeRef(domain.Id, chain.Base), image.Volumes[1].Parent);
        Assert.Equal(new VolumeRef(domain.Id, chain.Middle), image.Volumes[2].Parent);
        Assert.All(image.Volumes, v =>
        {
            Assert.Equal(Legality.Legal, v.Legality);
            Assert.Equal(ChainSeeder.Capacity, v.Capacity);
            Assert.Equal(domain.Id, v.Domain);
            Assert.InRange(v.AllocatedBytes, ChainSeeder.LayerDataBytes, ChainSeeder.Capacity / 4);
        });
        Assert.Equal(chain.Leaf, image.Leaf.Id);
        Assert.Equal(image.Volumes[1], await domain.DescribeVolumeAsync(chain.Image, chain.Middle));

        await ContractAssert.FailsWithAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(ImageId.New()));
        await ContractAssert.FailsWithAsync(ErrorCodes.VolumeNotFound, () => domain.DescribeVolumeAsync(chain.Image, VolumeId.New()));
    }

    [Fact]
    public async Task CloneImageStructure_makes_empty_illegal_twins_with_the_same_ids_and_parents()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var sourceBefore = await source.DescribeImageAsync(chain.Image);

        var clone = await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default);

        Assert.Equal(destination.Id, clone.Domain);
        Assert.Equal(chain.Ids, clone.Volumes.Select(v => v.Id));
        Assert.Null(clone.Volumes[0].Parent);
        Assert.Equal(new VolumeRef(destination.Id, chain.Base), clone.Volumes[1].Parent);
        Assert.Equal(new VolumeRef(destination.Id, chain.Middle), clone.Volumes[2].Parent);
        Assert.Equal(sourceBefore.Volumes.Select(v => (v.Type, v.Format, v.Capacity)), clone.Volumes.Select(v => (v.Type, v.Format, v.Capacity)));
        Assert.All(clone.Volumes, v => Assert.Equal(Legality.Illegal, v.Legality));
        Assert.All(clone.Volumes, v => Assert.True(v.AllocatedBytes < ChainSeeder.LayerDataBytes, $"twin {v.Id} holds {v.AllocatedBytes} bytes before any copy"));

        var again = await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default);
        Assert.Equal(clone.Volumes.Select(v => (v.Id, v.Parent, v.CreatedAt, v.Legality)), again.Volumes.Select(v => (v.Id, v.Parent, v.CreatedAt, v.Legality)));
        Assert.Equal(sourceBefore.Volumes, (await source.DescribeImageAsync(chain.Image)).Volumes);
    }

    [Fact]
    public async Task CopyVolumeData_makes_each_twin_legal_with_a_new_generation_keeping_sparseness()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var twins = await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default);

        foreach (var twin in twins.Volumes)
        {
            var progress = new RecordingProgress<CopyProgress>();
            var copied = await destination.CopyVolumeDataAsync(source, chain.Image, twin.Id, progress);

            Assert.Equal(Legality.Legal, copied.Legality);
            Assert.True(copied.Generation > twin.Generation, $"generation {twin.Generation} → {copied.Generation}");
            Assert.Equal(twin.Parent, copied.Parent);
            Assert.InRange(copied.AllocatedBytes, ChainSeeder.LayerDataBytes, ChainSeeder.Capacity / 4);
            Assert.NotEmpty(progress.Reports);
            var last = progress.Reports[^1];
            Assert.Equal(last.Total, last.Done);

            var repeated = await destination.CopyVolumeDataAsync(source, chain.Image, twin.Id);
            Assert.Equal(copied.Generation, repeated.Generation);
            Assert.Equal(Legality.Legal, repeated.Legality);
        }
        Assert.All((await source.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Equal(Legality.Legal, v.Legality));
    }

    [Fact]
    public async Task CopyVolumeData_without_a_twin_is_refused()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);

        var e = await Assert.ThrowsAsync<OperationFailedException>(() => destination.CopyVolumeDataAsync(source, chain.Image, chain.Base));
        Assert.Contains(e.Code, new[] { ErrorCodes.ImageNotFound, ErrorCodes.VolumeNotFound });
        Assert.Empty(await destination.ListImagesAsync());
    }

    [Fact]
    public async Task A_destination_too_small_is_refused_up_front_naming_the_numbers_and_nothing_is_created()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var tiny = await CreateDomainAsync("contract-tiny", 1L << 20);
        var chain = await SeedChainAsync(source);

        var e = await ContractAssert.FailsWithAsync(ErrorCodes.NotEnoughSpace, () => tiny.CloneImageStructureAsync(source, chain.Image, TestOwners.Default));
        var available = (await tiny.DescribeAsync()).AvailableBytes;
        Assert.Contains(available.ToString(), e.Message);
        Assert.Empty(await tiny.ListImagesAsync());
    }

    [Fact]
    public async Task CreateVolume_with_a_parent_on_another_domain_makes_a_cross_domain_chain()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var sourceLeafBefore = await source.DescribeVolumeAsync(chain.Image, chain.Leaf);
        var newLeaf = VolumeId.New();

        var spec = new NewVolume(chain.Image, newLeaf, VolumeFormat.Cow, chain.Capacity, new VolumeRef(source.Id, chain.Leaf));
        var created = await destination.CreateVolumeAsync(spec, source);

        Assert.Equal(new VolumeRef(source.Id, chain.Leaf), created.Parent);
        Assert.Equal(VolumeType.Leaf, created.Type);
        Assert.Equal(Legality.Legal, created.Legality);
        Assert.Equal([newLeaf], (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
        Assert.Equal(created, await destination.CreateVolumeAsync(spec, source));
        Assert.Equal(sourceLeafBefore, await source.DescribeVolumeAsync(chain.Image, chain.Leaf));

        var resolved = await new StoragePool([source, destination]).ResolveChainAsync(destination.Id, chain.Image);
        Assert.Equal([source.Id, source.Id, source.Id, destination.Id], resolved.Layers.Select(l => l.Volume.Domain));
        Assert.Equal(chain.PathsOn(source, chain.Base, chain.Middle, chain.Leaf).Append(destination.Locate(chain.Image, newLeaf)),
            resolved.Layers.Select(l => l.Path));
    }

    [Fact]
    public async Task SetParent_repoints_a_cross_domain_leaf_at_its_parent_copy()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var newLeaf = VolumeId.New();
        var created = await destination.CreateVolumeAsync(
            new NewVolume(chain.Image, newLeaf, VolumeFormat.Cow, chain.Capacity, new VolumeRef(source.Id, chain.Leaf), Owner: TestOwners.Default), source);
        await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.Default);
        foreach (var id in chain.Ids) await destination.CopyVolumeDataAsync(source, chain.Image, id);

        var repointed = await destination.SetParentAsync(chain.Image, newLeaf, new VolumeRef(destination.Id, chain.Leaf), destination, rewriteHeader: true);

        Assert.Equal(new VolumeRef(destination.Id, chain.Leaf), repointed.Parent);
        Assert.True(repointed.Generation > created.Generation);
        var image = await destination.DescribeImageAsync(chain.Image);
        Assert.Equal([chain.Base, chain.Middle, chain.Leaf, newLeaf], image.Volumes.Select(v => v.Id));
        Assert.Equal([VolumeType.Internal, VolumeType.Internal, VolumeType.Internal, VolumeType.Leaf], image.Volumes.Select(v => v.Type));
        var resolved = await new StoragePool([source, destination]).ResolveChainAsync(destination.Id, chain.Image);
        Assert.All(resolved.Layers, l => Assert.Equal(destination.Id, l.Volume.Domain));

        var again = await destination.SetParentAsync(chain.Image, newLeaf, new VolumeRef(destination.Id, chain.Leaf), destination, rewriteHeader: true);
        Assert.Equal(repointed.Parent, again.Parent);
        Assert.Equal(repointed.Generation, again.Generation);
    }

    [Fact]
    public async Task MarkLegal_makes_a_volume_legal_once()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var spec = new NewVolume(ImageId.New(), VolumeId.New(), VolumeFormat.Cow, ChainSeeder.Capacity, Legality: Legality.Illegal);
        var created = await domain.CreateVolumeAsync(spec);
        Assert.Equal(Legality.Illegal, created.Legality);

        var legal = await domain.MarkLegalAsync(spec.Image, spec.Id);
        Assert.Equal(Legality.Legal, legal.Legality);
        Assert.True(legal.Generation > created.Generation);
        var again = await domain.MarkLegalAsync(spec.Image, spec.Id);
        Assert.Equal(legal.Generation, again.Generation);
    }

    [Fact]
    public async Task DeleteImage_removes_all_its_volumes_and_a_repeat_is_quiet()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var chain = await SeedChainAsync(domain);
        var kept = await SeedChainAsync(domain);
        var usedBefore = (await domain.DescribeAsync()).UsedBytes;

        await domain.DeleteImageAsync(chain.Image);

        Assert.Equal([kept.Image], await domain.ListImagesAsync());
        await ContractAssert.FailsWithAsync(ErrorCodes.ImageNotFound, () => domain.DescribeImageAsync(chain.Image));
        // Its space comes back at once or soon after: a file domain unlinks the files after the delete answered.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((await domain.DescribeAsync()).UsedBytes >= usedBefore && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        Assert.True((await domain.DescribeAsync()).UsedBytes < usedBefore);
        await domain.DeleteImageAsync(chain.Image);
        Assert.Equal(3, (await domain.DescribeImageAsync(kept.Image)).Volumes.Count);
    }

    [Fact]
    public async Task RemoveIllegalLeftovers_removes_failed_images_but_keeps_those_in_use_and_legal_ones()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var failed = await SeedChainAsync(source);
        var running = await SeedChainAsync(source);
        var done = await SeedChainAsync(source);
        await destination.CloneImageStructureAsync(source, failed.Image, TestOwners.Default);
        await destination.CopyVolumeDataAsync(source, failed.Image, failed.Base);
        await destination.CloneImageStructureAsync(source, running.Image, TestOwners.Default);
        await destination.CloneImageStructureAsync(source, done.Image, TestOwners.Default);
        foreach (var id in done.Ids) await destination.CopyVolumeDataAsync(source, done.Image, id);

        var removed = await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId> { running.Image });

        // Per volume: the failed image's ILLEGAL middle and leaf go, its LEGAL base (complete, verified) stays.
        Assert.Equal(new[] { failed.Middle, failed.Leaf }.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.All(removed, v => Assert.Equal(failed.Image, v.Image));
        Assert.Equal([failed.Base], (await destination.DescribeImageAsync(failed.Image)).Volumes.Select(v => v.Id));
        Assert.Equal(new[] { failed.Image, running.Image, done.Image }.OrderBy(i => i.Value), (await destination.ListImagesAsync()).OrderBy(i => i.Value));
        Assert.Equal(3, (await source.DescribeImageAsync(failed.Image)).Volumes.Count);
        Assert.Empty(await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId> { running.Image }));
    }

    [Fact]
    public async Task RemoveIllegalLeftovers_never_removes_a_legal_chain_and_takes_what_lies_over_an_illegal_volume()
    {
        var domain = await CreateDomainAsync("contract-a", RoomyCapacity);
        var healthy = await SeedChainAsync(domain);
        // An ILLEGAL middle under a LEGAL leaf: the leaf depends on data that is not complete.
        var image = ImageId.New();
        VolumeId baseId = VolumeId.New(), middleId = VolumeId.New(), leafId = VolumeId.New();
        await domain.CreateVolumeAsync(new NewVolume(image, baseId, VolumeFormat.Cow, ChainSeeder.Capacity));
        await domain.CreateVolumeAsync(new NewVolume(image, middleId, VolumeFormat.Cow, ChainSeeder.Capacity, new VolumeRef(domain.Id, baseId), Legality.Illegal));
        await domain.CreateVolumeAsync(new NewVolume(image, leafId, VolumeFormat.Cow, ChainSeeder.Capacity, new VolumeRef(domain.Id, middleId)));

        var removed = await domain.RemoveIllegalLeftoversAsync(new HashSet<ImageId>());

        Assert.Equal(new[] { middleId, leafId }.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.Equal([baseId], (await domain.DescribeImageAsync(image)).Volumes.Select(v => v.Id));
        Assert.Equal(healthy.Ids, (await domain.DescribeImageAsync(healthy.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task RemoveIllegalLeftovers_skips_a_leftover_that_a_process_has_open()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        await destination.CloneImageStructureAsync(source, chain.Image, TestOwners.New());

        await using (await HoldOpenAsync(destination, chain.Image, chain.Leaf))
            Assert.Empty(await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
        Assert.Equal(3, (await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>())).Count);
    }

    [Fact]
    public async Task Volumes_a_migration_makes_carry_its_owner()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var owner = TestOwners.New();

        var leaf = await destination.CreateVolumeAsync(
            new NewVolume(chain.Image, VolumeId.New(), VolumeFormat.Cow, chain.Capacity, new VolumeRef(source.Id, chain.Leaf), Owner: owner), source);
        var twins = await destination.CloneImageStructureAsync(source, chain.Image, owner);

        Assert.Equal(owner, leaf.Owner);
        Assert.All(twins.Volumes, v => Assert.Equal(owner, v.Owner));
        Assert.All((await destination.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Equal(owner, v.Owner));
        Assert.All((await source.DescribeImageAsync(chain.Image)).Volumes, v => Assert.Null(v.Owner));
        var copied = await destination.CopyVolumeDataAsync(source, chain.Image, chain.Base);
        Assert.Equal(owner, copied.Owner);
    }

    [Fact]
    public async Task A_destination_holding_volumes_of_the_image_that_the_migration_did_not_make_is_refused_and_never_adopted()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var (first, second) = (TestOwners.New(), TestOwners.New());
        var made = await destination.CloneImageStructureAsync(source, chain.Image, first);

        var e = await ContractAssert.FailsWithAsync(ErrorCodes.DestinationHoldsImage,
            () => destination.CloneImageStructureAsync(source, chain.Image, second));
        Assert.Contains(chain.Image.ToString(), e.Message);
        await ContractAssert.FailsWithAsync(ErrorCodes.DestinationHoldsImage, () => destination.CreateVolumeAsync(
            new NewVolume(chain.Image, VolumeId.New(), VolumeFormat.Cow, chain.Capacity, new VolumeRef(source.Id, chain.Leaf), Owner: second), source));
        // Its rollback deletes nothing it did not make.
        Assert.Empty(await destination.DeleteOwnedVolumesAsync(chain.Image, second));
        Assert.Equal(made.Volumes.Select(v => (v.Id, v.Owner)), (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => (v.Id, v.Owner)));
        // The migration that made them goes on with them.
        Assert.Equal(made.Volumes.Select(v => v.Id), (await destination.CloneImageStructureAsync(source, chain.Image, first)).Volumes.Select(v => v.Id));

        // An operator's image (no owner), e.g. a disk moved back onto a domain that still holds it, is never taken either.
        Assert.Empty(await source.DeleteOwnedVolumesAsync(chain.Image, second));
        await ContractAssert.FailsWithAsync(ErrorCodes.DestinationHoldsImage, () => source.CloneImageStructureAsync(destination, chain.Image, second));
        Assert.Equal(chain.Ids, (await source.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task DeleteOwnedVolumes_removes_the_migrations_volumes_only_and_a_repeat_is_quiet()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var kept = await SeedChainAsync(destination);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, chain.Image, owner);
        await destination.CopyVolumeDataAsync(source, chain.Image, chain.Base);

        var removed = await destination.DeleteOwnedVolumesAsync(chain.Image, owner);

        Assert.Equal(chain.Ids.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.Equal([kept.Image], await destination.ListImagesAsync());
        Assert.Empty(await destination.DeleteOwnedVolumesAsync(chain.Image, owner));
        Assert.Empty(await destination.DeleteOwnedVolumesAsync(kept.Image, owner));
        Assert.Equal(kept.Ids, (await destination.DescribeImageAsync(kept.Image)).Volumes.Select(v => v.Id));
        Assert.Equal(chain.Ids, (await source.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task DeleteOwnedVolumes_leaves_a_volume_of_the_same_image_that_someone_else_made()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, chain.Image, owner);
        await destination.CopyVolumeDataAsync(source, chain.Image, chain.Base);
        // An operator's volume in the same image, on no volume of the migration.
        var other = await destination.CreateVolumeAsync(new NewVolume(chain.Image, VolumeId.New(), VolumeFormat.Cow, chain.Capacity));

        var removed = await destination.DeleteOwnedVolumesAsync(chain.Image, owner);

        Assert.Equal(chain.Ids.OrderBy(v => v.Value), removed.Select(v => v.Id).OrderBy(v => v.Value));
        Assert.Equal([other.Id], (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
        Assert.Empty(await destination.RemoveIllegalLeftoversAsync(new HashSet<ImageId>()));
        Assert.Equal([other.Id], (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task DeleteOwnedVolumes_refuses_when_a_volume_it_does_not_own_lies_over_one_it_owns()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, chain.Image, owner);
        foreach (var id in chain.Ids) await destination.CopyVolumeDataAsync(source, chain.Image, id);
        // An operator's snapshot over the copied leaf.
        var snapshot = await destination.CreateVolumeAsync(
            new NewVolume(chain.Image, VolumeId.New(), VolumeFormat.Cow, chain.Capacity, new VolumeRef(destination.Id, chain.Leaf)));

        await ContractAssert.FailsWithAsync(ErrorCodes.Conflict, () => destination.DeleteOwnedVolumesAsync(chain.Image, owner));
        Assert.Equal([.. chain.Ids, snapshot.Id], (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
    }

    [Fact]
    public async Task Deletes_refuse_with_VOLUME_IN_USE_while_a_process_has_a_volume_open()
    {
        var source = await CreateDomainAsync("contract-a", RoomyCapacity);
        var destination = await CreateDomainAsync("contract-b", RoomyCapacity);
        var chain = await SeedChainAsync(source);
        var owner = TestOwners.New();
        await destination.CloneImageStructureAsync(source, chain.Image, owner);

        await using (await HoldOpenAsync(source, chain.Image, chain.Base))
        await using (await HoldOpenAsync(destination, chain.Image, chain.Leaf))
        {
            var e = await ContractAssert.FailsWithAsync(ErrorCodes.VolumeInUse, () => source.DeleteImageAsync(chain.Image));
            Assert.Contains(chain.Base.ToString(), e.Message);
            await ContractAssert.FailsWithAsync(ErrorCodes.VolumeInUse, () => destination.DeleteOwnedVolumesAsync(chain.Image, owner));
            Assert.Equal(chain.Ids, (await source.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
            Assert.Equal(chain.Ids, (await destination.DescribeImageAsync(chain.Image)).Volumes.Select(v => v.Id));
        }

        await source.DeleteImageAsync(chain.Image);
        Assert.Equal(3, (await destination.DeleteOwnedVolumesAsync(chain.Image, owner)).Count);
        Assert.Empty(await source.ListImagesAsync());
        Assert.Empty(await destination.ListImagesAsync());
    }
}
