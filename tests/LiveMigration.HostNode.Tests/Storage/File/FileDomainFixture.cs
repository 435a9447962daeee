using LiveMigration.HostNode.Processes;
using LiveMigration.HostNode.Storage;
using LiveMigration.HostNode.Storage.File;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Storage.File;

/// <summary>A temp folder holding domain roots, deleted afterwards, and helpers that run qemu-io/qemu-img.</summary>
public sealed class TempDomainRoot : IDisposable
{
    public string Root { get; } = Path.Combine(Path.GetTempPath(), $"lsm-fsd-{Guid.NewGuid():N}");

    public TempDomainRoot() => Directory.CreateDirectory(Root);

    public Task<FileStorageDomain> NewDomainAsync(string name, long capacity = 1L << 30) =>
        FileStorageDomain.CreateAsync(Root, DomainId.New(), name, capacity);

    public void Dispose()
    {
        FileStorageDomain.RemovalsFinishedAsync().Wait(TimeSpan.FromSeconds(30)); // a delete's unlinks end before the folder goes
        if (Directory.Exists(Root)) Directory.Delete(Root, recursive: true);
    }

    /// <summary>Writes a byte pattern (or zeroes with pattern null) into a volume through its chain, as a guest would.</summary>
    public static Task WriteAsync(string path, VolumeFormat format, long offset, long length, int? pattern) =>
        SampleImage.WritePatternAsync(path, format, offset, length, pattern);

    public static Task<string> InfoAsync(string path) =>
        ProcessRunner.RunCheckedAsync("qemu-img", ["info", "-U", "--output=json", path], ErrorCodes.QemuImgFailed);

    public static async Task<bool> ChainsReadTheSameAsync(string first, string second)
    {
        var result = await ProcessRunner.RunAsync("qemu-img", ["compare", "-U", first, second]);
        Assert.True(result.ExitCode is 0 or 1, result.StandardError);
        return result.ExitCode == 0;
    }

    /// <summary>An image with a raw base and two qcow2 layers, each with its own data, a zeroed range and sparse gaps.</summary>
    public static async Task<(ImageId Image, VolumeId[] Volumes)> ThreeVolumeChainAsync(FileStorageDomain domain, long capacity = 16 << 20)
    {
        var image = ImageId.New();
        VolumeId baseId = VolumeId.New(), midId = VolumeId.New(), leafId = VolumeId.New();
        await domain.CreateVolumeAsync(new NewVolume(image, baseId, VolumeFormat.Raw, capacity));
        await WriteAsync(domain.Locate(image, baseId), VolumeFormat.Raw, 0, 1 << 20, 0x11);
        await WriteAsync(domain.Locate(image, baseId), VolumeFormat.Raw, 8 << 20, 512 << 10, 0x12);
        await domain.CreateVolumeAsync(new NewVolume(image, midId, VolumeFormat.Cow, capacity, new VolumeRef(domain.Id, baseId)));
        await WriteAsync(domain.Locate(image, midId), VolumeFormat.Cow, 1 << 20, 1 << 20, 0x22);
        await WriteAsync(domain.Locate(image, midId), VolumeFormat.Cow, 8 << 20, 64 << 10, null); // hides the base's data there
        await WriteAsync(domain.Locate(image, midId), VolumeFormat.Cow, (12 << 20) + 4096, 4096, 0x23); // a partial cluster
        await domain.CreateVolumeAsync(new NewVolume(image, leafId, VolumeFormat.Cow, capacity, new VolumeRef(domain.Id, midId)));
        await WriteAsync(domain.Locate(image, leafId), VolumeFormat.Cow, 4 << 20, 256 << 10, 0x33);
        await WriteAsync(domain.Locate(image, leafId), VolumeFormat.Cow, 1 << 20, 64 << 10, 0x34);
        return (image, [baseId, midId, leafId]);
    }

    public static async Task<OperationFailedException> RefusedAsync(string code, Func<Task> action)
    {
        var error = await Assert.ThrowsAsync<OperationFailedException>(action);
        Assert.Equal(code, error.Code);
        return error;
    }
}
