using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;
using static LiveMigration.HostNode.Tests.Storage.File.TempDomainRoot;

namespace LiveMigration.HostNode.Tests.Storage.File;

/// <summary>
/// The copy's proof compares its images in slices side by side (<see cref="QemuImg.CompareInSlicesAsync"/>): every byte
/// must still be compared once, and a difference anywhere found and named at its offset in the image.
/// </summary>
public sealed class SlicedCompareTests : IDisposable
{
    private const long MiB = 1 << 20;
    private readonly TempDomainRoot _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Slices_follow_each_other_from_zero_to_the_size_and_share_the_data()
    {
        // all the data in the first 256 MiB of a 4 GiB disk: the cut lies in the data, not half-way through the disk
        var halves = QemuImg.Slices([new AllocatedRange(0, 256 * MiB)], 4096 * MiB, 2);
        Assert.Equal([(0, 128 * MiB), (128 * MiB, 3968 * MiB)], halves);

        var data = new AllocatedRange[] { new(10 * MiB, 30 * MiB), new(100 * MiB, 10 * MiB), new(1000 * MiB + 4096, 60 * MiB) };
        foreach (var count in new[] { 1, 2, 3, 4 })
        {
            var slices = QemuImg.Slices(data, 2048 * MiB, count);
            Assert.Equal(count, slices.Count);
            Assert.Equal(0, slices[0].Offset);
            Assert.Equal(2048 * MiB, slices[^1].Offset + slices[^1].Length);
            for (var i = 1; i < slices.Count; i++)
            {
                Assert.Equal(slices[i - 1].Offset + slices[i - 1].Length, slices[i].Offset);
                Assert.Equal(0, slices[i].Offset % MiB);
            }
        }

        Assert.Equal([(0, 64 * MiB)], QemuImg.Slices([], 64 * MiB, 4)); // no data: nothing to share
        Assert.Equal([(0, 64 * MiB + 1)], QemuImg.Slices(data, 64 * MiB + 1, 4)); // not whole sectors: QEMU's raw driver would refuse a cut
    }

    [Fact]
    public async Task Slices_that_leave_a_byte_out_are_refused()
    {
        var node = QemuImg.ImageNode("/nonexistent", VolumeFormat.Raw);
        await Assert.ThrowsAsync<ArgumentException>(() => QemuImg.CompareInSlicesAsync(node, node, 4 * MiB, [(0, 2 * MiB), (2 * MiB + 512, 2 * MiB - 512)], default));
        await Assert.ThrowsAsync<ArgumentException>(() => QemuImg.CompareInSlicesAsync(node, node, 4 * MiB, [(0, 2 * MiB)], default));
    }

    [Theory]
    [InlineData(0)]                         // the first byte of the first slice
    [InlineData(64 * MiB - 512)]            // the last sector before the cut
    [InlineData(64 * MiB)]                  // the first sector after it
    [InlineData(130 * MiB + 4096)]          // inside the second slice's data
    [InlineData(512 * MiB - 512)]           // the image's last sector, where no data was
    public async Task A_difference_in_any_slice_is_found_at_its_offset_in_the_image(long offset)
    {
        var (first, second) = await TwinLayersAsync();
        var sourceMap = await QemuImg.MapAsync(QemuImg.LayerAloneNode(first), default);
        var slices = QemuImg.Slices(sourceMap.Data, sourceMap.Size, 2);
        Assert.Equal([(0, 64 * MiB), (64 * MiB, 448 * MiB)], slices);
        Assert.True((await QemuImg.CompareInSlicesAsync(QemuImg.LayerAloneNode(first), QemuImg.LayerAloneNode(second), sourceMap.Size, slices, default)).Same);

        await WriteAsync(second, VolumeFormat.Cow, offset, 512, 0x77);

        var (same, output) = await QemuImg.CompareInSlicesAsync(QemuImg.LayerAloneNode(first), QemuImg.LayerAloneNode(second), sourceMap.Size, slices, default);
        Assert.False(same);
        Assert.Contains($"offset {offset}", output);
    }

    /// <summary>Two equal qcow2 layers (backing a raw file) of 512 MiB with 128 MiB of data: 96 MiB at the start, 32 MiB at 128 MiB.</summary>
    private async Task<(string First, string Second)> TwinLayersAsync()
    {
        var backing = Path.Combine(_temp.Root, "base.raw");
        var first = Path.Combine(_temp.Root, "layer");
        var second = Path.Combine(_temp.Root, "copy");
        await ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "raw", backing, $"{512 * MiB}"], ErrorCodes.QemuImgFailed);
        foreach (var path in new[] { first, second })
        {
            await ProcessRunner.RunCheckedAsync("qemu-img", ["create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", path], ErrorCodes.QemuImgFailed);
            await WriteAsync(path, VolumeFormat.Cow, 0, 96 * MiB, 0x5a);
            await WriteAsync(path, VolumeFormat.Cow, 128 * MiB, 32 * MiB, 0x5b);
        }
        return (first, second);
    }
}
