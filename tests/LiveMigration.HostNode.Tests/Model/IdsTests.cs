using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Tests.Model;

public sealed class IdsTests
{
    [Theory]
    [InlineData("..")]
    [InlineData("../etc/passwd")]
    [InlineData("/tmp/x")]
    [InlineData("2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11/..")]
    [InlineData("{2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11}")]
    [InlineData("2f1c6e2a6a3e4c439a530f6f0c7d9b11")]
    [InlineData("")]
    [InlineData(null)]
    public void Anything_but_a_canonical_uuid_is_refused_with_INVALID_ID(string? text)
    {
        var e = Assert.Throws<OperationFailedException>(() => VolumeId.Parse(text));
        Assert.Equal(ErrorCodes.InvalidId, e.Code);
        Assert.Contains("volume id must be a UUID", e.Message);
        Assert.False(DomainId.TryParse(text, out _));
    }

    [Fact]
    public void A_canonical_uuid_round_trips()
    {
        var id = ImageId.New();
        Assert.Equal(id, ImageId.Parse(id.ToString()));
        Assert.Equal(id.Value, ImageId.Parse(id.ToString().ToUpperInvariant()).Value);
    }

    [Fact]
    public void The_blank_volume_id_is_the_all_zero_uuid()
    {
        Assert.True(VolumeId.Blank.IsBlank);
        Assert.Equal("00000000-0000-0000-0000-000000000000", VolumeId.Blank.ToString());
    }
}
